"""Turn expected user errors into one clear line instead of a deep traceback."""

from __future__ import annotations

import contextlib
import logging
import os
import sys

from hydra.errors import InstantiationException

log = logging.getLogger("tunelab")


class OutputError(OSError):
    """An output file could not be written (disk full, read-only folder); the message names it."""


USER_ERRORS = (FileNotFoundError, KeyError, ValueError, FloatingPointError, OutputError)


def _root_cause(exc: BaseException) -> BaseException:
    while isinstance(exc, InstantiationException) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


@contextlib.contextmanager
def friendly_errors():
    """Print `error: <message>` and exit 1 for data/config/checkpoint problems.

    TUNELAB_DEBUG=1 re-raises with the full traceback.
    """
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - filtered just below
        cause = _root_cause(exc)
        if os.environ.get("TUNELAB_DEBUG") or not isinstance(cause, USER_ERRORS):
            raise
        msg = cause.args[0] if isinstance(cause, KeyError) and cause.args else str(cause)
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(1)
