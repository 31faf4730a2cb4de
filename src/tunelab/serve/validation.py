"""Request fields checked against the ranges of the OpenAI and Ollama APIs.

Every field a client can send is either validated and used, accepted because it cannot change the
answer (a user id, GPU placement, keep-alive), accepted only at its neutral value (a penalty of 0,
no tools), or refused: a bad value gets HTTP 400 naming the field, never a silent replacement.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

Check = Callable[[Any, str], Any]  # (value, field name) -> parsed value, or raises RequestError


class RequestError(ValueError):
    """A bad request: answered with HTTP `status` and this message (naming `param`)."""

    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


def fail(name: str, problem: str) -> RequestError:
    return RequestError(f"{name}: {problem}", param=name)


@dataclass
class GenParams:
    """What one request asks the model for (already validated)."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    num_ctx: int | None = None  # Ollama: the window (prompt + answer); None: the model's context
    truncate: bool = True  # Ollama: with num_ctx, cut a long prompt from the left (else refuse)


# --- value checks ----------------------------------------------------------------------------
def number(lo: float, hi: float = math.inf) -> Check:
    """A finite JSON number in [lo, hi]."""

    def check(value: Any, name: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise fail(name, f"expected a number, got {value!r}")
        if not math.isfinite(value) or not lo <= value <= hi:
            bound = f"between {lo:g} and {hi:g}" if math.isfinite(hi) else f">= {lo:g}"
            raise fail(name, f"must be a finite number {bound}, got {value!r}")
        return float(value)

    return check


def integer(lo: int = INT64_MIN, hi: int = INT64_MAX) -> Check:
    """A JSON integer (not 2.0, not true) in [lo, hi]."""

    def check(value: Any, name: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(name, f"expected an integer, got {value!r}")
        if not lo <= value <= hi:
            if hi == INT64_MAX and lo != INT64_MIN:
                raise fail(name, f"must be >= {lo}, got {value}")
            raise fail(name, f"must be an integer between {lo} and {hi}, got {value}")
        return value

    return check


def boolean(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise fail(name, f"expected true or false, got {value!r}")
    return value


def string(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise fail(name, f"expected a string, got {type(value).__name__}")
    return value


def anything(value: Any, name: str) -> Any:
    return value


def one_of(*allowed: Any) -> Check:
    def check(value: Any, name: str) -> Any:
        if not any(value == a and type(value) is type(a) for a in allowed):
            raise fail(name, f"expected one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value

    return check


def neutral(check: Check, *values: Any, why: str = "") -> Check:
    """A field tunelab does not implement: valid values other than the neutral ones are refused."""

    def wrapped(value: Any, name: str) -> Any:
        parsed = check(value, name)
        if not any(parsed == v and type(parsed) is type(v) for v in values):
            shown = " or ".join(map(repr, values))
            raise fail(name, f"not supported by tunelab (only {shown}){why}; got {value!r}")
        return parsed

    return wrapped


def empty(value: Any, name: str) -> Any:
    """Tools, images, logit biases...: only an empty list or object."""
    if value not in ([], {}, ""):
        raise fail(name, "not supported by tunelab (only empty)")
    return value


def stops(max_items: int | None = None) -> Check:
    """A string or a list of non-empty strings (stop sequences)."""

    def check(value: Any, name: str) -> list[str]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
            raise fail(name, "expected a string or a list of strings")
        if max_items is not None and len(items) > max_items:
            raise fail(name, f"at most {max_items} stop sequences, got {len(items)}")
        for j, s in enumerate(items):
            if not s:
                raise fail(f"{name}[{j}]" if value is items else name, "must not be empty")
            text(s, f"{name}[{j}]" if value is items else name)
        return list(items)

    return check


def text(value: str, name: str) -> str:
    """Text that is valid Unicode (JSON can carry a lone surrogate such as "\\ud800")."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise fail(name, f"not valid text (a lone surrogate at character {e.start})") from None
    return value


def obj(fields: dict[str, Check]) -> Check:
    """A JSON object (or null) whose keys are checked by `fields`."""

    def check(value: Any, name: str) -> dict[str, Any]:
        return parse_fields(value, fields, f"{name}.")

    return check


def parse_fields(body: Any, fields: dict[str, Check], prefix: str = "") -> dict[str, Any]:
    """Check every key of a JSON object; unknown keys are refused. null means absent."""
    where = prefix[:-1] if prefix else "the request body"
    if not isinstance(body, dict):
        raise RequestError(f"{where}: expected a JSON object", param=prefix[:-1] or None)
    parsed: dict[str, Any] = {}
    for key, value in body.items():
        name = f"{prefix}{key}"
        if key not in fields:
            raise fail(name, "unknown field (not supported by tunelab)")
        if value is not None:
            parsed[key] = fields[key](value, name)
    return parsed
