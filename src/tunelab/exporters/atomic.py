"""Write an export folder atomically: into a temporary sibling folder, then one rename.

A failed write (a disk that fills up, an error half-way) removes the temporary folder, so `out`
is either the complete export or untouched, never half-written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path


class ExportError(ValueError):
    """A refused or failed export (one line, shown without a traceback)."""


def check_destination(out: Path, overwrite: bool) -> None:
    """Refuse an existing file, or a non-empty folder unless `overwrite`, before any work."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"out={out}: exists and is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(
            f"out={out}: folder exists and is not empty; pass overwrite=true to replace it"
        )


def _fsync_tree(folder: Path) -> None:
    for f in folder.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_folder(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `out`; on success it becomes `out` in one rename."""
    out = Path(out)
    check_destination(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        _fsync_tree(tmp)
        check_destination(out, overwrite)  # still free (nobody wrote there meanwhile)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ExportError(
                f"out={out}: disk full while writing the export ({e.strerror}); nothing was "
                "written (the temporary folder was removed)"
            ) from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
