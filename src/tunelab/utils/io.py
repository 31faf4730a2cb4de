"""Files in and out: input files checked before they are opened, outputs written atomically.

- `check_input_file`: a path must be an existing regular file; a directory, a FIFO (which would
  block the reader forever), a socket or device, a symlink loop or an unreadable file are each
  refused in one line naming the path.
- `read_text_file`: the file's text as UTF-8 (a leading byte-order mark is accepted, as Python's
  `utf-8-sig` does); bad bytes are reported with their byte offset in the file.
- `atomic_write` / `atomic_write_text` / `write_json`: the content goes to a temporary file in
  the same folder, is flushed to disk, then renamed over the target, so a failure (a lone
  surrogate that cannot be encoded, a full disk, a kill) never leaves a truncated or empty file;
  the previous version, if any, stays. Failures to write name the path in one line.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from tunelab.utils.errors import OutputError

UTF8_BOM = b"\xef\xbb\xbf"


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Temporary files are created 0600; renamed outputs get the mode a plain open() would give them.
FILE_MODE = 0o666 & ~_read_umask()


class InputFileError(ValueError):
    """An input path that is not a readable regular file (the message names it)."""


def check_input_file(path: str | Path, what: str = "data file") -> Path:
    """The path, if it is a readable regular file; else one clear error naming it."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise InputFileError(f"{path}: {what} is a broken symbolic link") from None
        raise InputFileError(f"{path}: {what} not found") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InputFileError(
                f"{path}: {what} is a symbolic link loop (too many levels of symbolic links)"
            ) from None
        raise InputFileError(f"{path}: cannot read the {what}: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputFileError(f"{path}: is a directory; expected a {what}")
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "not a regular file"
        raise InputFileError(f"{path}: {what} is {kind}; expected a regular file")
    if not os.access(path, os.R_OK):
        raise InputFileError(f"{path}: cannot read the {what}: permission denied")
    return path


def read_text_file(path: str | Path, what: str = "data file") -> str:
    """UTF-8 text of a checked regular file; a leading byte-order mark is dropped."""
    path = check_input_file(path, what)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InputFileError(f"{path}: cannot read the {what}: {e.strerror}") from None
    return decode_utf8(raw, path)


def decode_utf8(raw: bytes, path: str | Path) -> str:
    skip = len(UTF8_BOM) if raw.startswith(UTF8_BOM) else 0
    try:
        return raw[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputFileError(
            f"{path}: not valid UTF-8 (byte offset {e.start + skip}): {e.reason}"
        ) from None


def _describe_write_error(path: Path, e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{path}: no space left on device (disk full or quota exceeded)"
    if "No space left on device" in str(e):
        return f"{path}: no space left on device"
    if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{path}: cannot write: {e.strerror.lower()} (is the run folder read-only?)"
    if isinstance(e, UnicodeEncodeError):
        return (
            f"{path}: cannot write: text holds a character UTF-8 cannot encode "
            f"({e.object[e.start : e.end]!a} at position {e.start})"
        )
    return ""


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; on success fsync and rename it over `path`.

    Disk-full, read-only and permission failures become one `OutputError` naming the path; on
    any failure the temporary file is removed and `path` keeps its previous content.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        kwargs = {} if "b" in mode else {"encoding": "utf-8", "newline": ""}
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
        tmp = None
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        message = _describe_write_error(path, e) if isinstance(e, Exception) else ""
        if message:
            raise OutputError(message) from e
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text atomically; text that cannot be encoded is refused before any write."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise OutputError(_describe_write_error(Path(path), e)) from None
    return atomic_write_bytes(path, data)


def write_json(path: str | Path, payload: Any, **dumps_kwargs: Any) -> Path:
    """JSON (indent 2, non-ASCII kept) written atomically, with a final newline."""
    options: dict[str, Any] = {"indent": 2, "ensure_ascii": False, **dumps_kwargs}
    return atomic_write_text(path, json.dumps(payload, **options) + "\n")


def atomic_save(path: str | Path, save: Callable[[IO[bytes]], None]) -> Path:
    """Run `save(file)` (e.g. torch.save) into a temporary file and rename it over `path`."""
    with atomic_write(path, "wb") as f:
        save(f)
    return Path(path)


def write_csv(path: str | Path, rows: list[dict[str, Any]], columns: list[str]) -> Path:
    """A CSV table (header + rows, keys outside `columns` ignored) written atomically."""
    with atomic_write(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)
