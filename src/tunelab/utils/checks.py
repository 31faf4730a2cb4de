"""Config values checked where they enter: one line naming the key, the rule and the value."""

from __future__ import annotations

from typing import Any


def check_int(key: str, value: Any, minimum: int = 1, allow_none: bool = False) -> int | None:
    """`value` as an int >= `minimum` (None passes when allowed); else a ValueError naming `key`."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        extra = " or null" if allow_none else ""
        raise ValueError(f"{key} must be an integer >= {minimum}{extra}, got {value!r}")
    return value


def check_data_sizes(
    batch_size: Any, max_length: Any = None, limit: Any = None, num_workers: Any = 0
) -> None:
    """The sizes every data module shares (data.batch_size, max_length, limit, num_workers)."""
    check_int("data.batch_size", batch_size)
    check_int("data.max_length", max_length, allow_none=True)
    check_int("data.limit", limit, allow_none=True)
    check_int("data.num_workers", num_workers, minimum=0)
