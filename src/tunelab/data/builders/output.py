"""The end of every builder: compare the rebuilt bytes with the committed file, or write them."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from tunelab.utils.io import atomic_write_bytes


def write_or_check(out: Path, data: bytes, elapsed: float, check: bool) -> int:
    """`--check`: exit status 1 if `out` differs from `data`; otherwise write `data` atomically."""
    if check:
        current = out.read_bytes() if out.exists() else b""
        if current != data:
            print(f"{out} is out of date; rebuild it with this builder", file=sys.stderr)
            return 1
        print(f"{out} is up to date ({elapsed:.1f} s)", file=sys.stderr)
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, data)
    print(
        f"wrote {out} ({len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}, "
        f"{elapsed:.1f} s)",
        file=sys.stderr,
    )
    return 0
