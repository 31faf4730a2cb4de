"""Instruction records: reading JSON/JSONL files and validating them at load time.

Two input forms are accepted and normalised to `Record`:
- Alpaca (instruction, input, output; optional `system` and multi-turn `history` as
  [[user, assistant], ...] in LLaMA-Factory's format);
- messages / ShareGPT (`messages` with role/content, or `conversations` with from/value).
Every problem is reported with the file, the line (JSONL) or index (JSON) and the field.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.utils.io import InputFileError, read_text_file

SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class DataError(ValueError):
    """A data file problem, with where it is and what was expected."""


@dataclass
class Record:
    instruction: str
    input: str = ""
    output: str = ""
    system: str | None = None
    history: list[tuple[str, str]] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)  # the record as read, for responses.json


def parse_json(text: str, where: str, line: bool) -> Any:
    """json.loads with every failure as one DataError naming `where`."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        if line:
            raise DataError(f"{where}: malformed JSON line ({e.msg} at column {e.colno})") from None
        raise DataError(
            f"{where}: malformed JSON ({e.msg} at line {e.lineno}, column {e.colno})"
        ) from None
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply to read") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise DataError(f"{where}: cannot read JSON: {str(e).split(';')[0]}") from None


def lone_surrogate(value: Any, field: str = "") -> tuple[str, int] | None:
    """(field path, character index) of the first string holding a lone UTF-16 surrogate
    (JSON escapes like "\\ud800" decode to one; it is not Unicode text and cannot be written
    as UTF-8), or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            return field or "(value)", e.start
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            name = f"{field}.{k}" if field else str(k)
            found = lone_surrogate(k, name) or lone_surrogate(v, name)
            if found:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = lone_surrogate(v, f"{field}[{i}]")
            if found:
                return found
    return None


def check_unicode(obj: Any, where: str) -> None:
    try:
        found = lone_surrogate(obj)
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply to read") from None
    if found:
        name, pos = found
        raise DataError(
            f"{where}: field {name!r} holds a lone surrogate (a \\ud800-\\udfff escape without "
            f"its pair) at character {pos}; not valid Unicode text"
        )


def read_json_text(path: str | Path, what: str = "data file") -> str:
    """The text of a JSON/JSONL file, checked first (regular file, UTF-8, BOM accepted)."""
    try:
        return read_text_file(path, what)
    except InputFileError as e:
        raise DataError(str(e)) from None


def read_json_records(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """Read a JSON list or JSONL file; returns (location, object) pairs for error messages."""
    path = Path(path)
    text = read_json_text(path)
    out: list[tuple[str, dict[str, Any]]] = []
    if path.suffix == ".jsonl" or (path.suffix != ".json" and not text.lstrip().startswith("[")):
        # Split on "\n" only: strings may hold U+2028 and friends, which splitlines() cuts at.
        for lineno, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            out.append((f"{path}:{lineno}", parse_json(line, f"{path}:{lineno}", line=True)))
    else:
        data = parse_json(text, str(path), line=False)
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
        out = [(f"{path}[{i}]", obj) for i, obj in enumerate(data)]
    # Text decoded from UTF-8 holds no surrogates: only a \\uD800-\\uDFFF escape can make one.
    maybe_surrogates = SURROGATE_ESCAPE.search(text) is not None
    for where, obj in out:
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        if maybe_surrogates:
            check_unicode(obj, where)
    return out


def _str_field(obj: dict, key: str, where: str, required: bool, allow_empty: bool = False) -> str:
    if key not in obj or obj[key] is None:
        if required:
            raise DataError(f"{where}: missing field {key!r}")
        return ""
    value = obj[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    if required and not allow_empty and not value.strip():
        raise DataError(f"{where}: field {key!r} is empty")
    return value


_ROLE_ALIASES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "system": "system",
}


def _from_messages(obj: dict, where: str) -> Record:
    key = "messages" if "messages" in obj else "conversations"
    msgs = obj[key]
    if not isinstance(msgs, list) or not msgs:
        raise DataError(f"{where}: field {key!r} must be a non-empty list of messages")
    turns: list[tuple[str, str]] = []
    system = None
    for j, m in enumerate(msgs):
        mwhere = f"{where}: {key}[{j}]"
        if not isinstance(m, dict):
            raise DataError(f"{mwhere}: expected an object, got {type(m).__name__}")
        role_key, text_key = ("role", "content") if "role" in m else ("from", "value")
        role = _ROLE_ALIASES.get(str(m.get(role_key)))
        if role is None:
            raise DataError(
                f"{mwhere}: unknown role {m.get(role_key)!r}; expected user/assistant/system"
            )
        text = _str_field(m, text_key, mwhere, required=True)
        if role == "system":
            if j != 0:
                raise DataError(f"{mwhere}: a system message must come first")
            system = text
        else:
            turns.append((role, text))
    if len(turns) < 2 or turns[-1][0] != "assistant":
        raise DataError(f"{where}: {key!r} must end with an assistant message after a user message")
    pairs = []
    for k in range(0, len(turns), 2):
        if turns[k][0] != "user" or k + 1 >= len(turns) or turns[k + 1][0] != "assistant":
            raise DataError(f"{where}: {key!r} must alternate user/assistant (position {k})")
        pairs.append((turns[k][1], turns[k + 1][1]))
    *history, (instruction, output) = pairs
    return Record(instruction=instruction, output=output, system=system, history=history, raw=obj)


def parse_record(obj: dict[str, Any], where: str, require_output: bool = True) -> Record:
    if "messages" in obj or "conversations" in obj:
        return _from_messages(obj, where)
    instruction = _str_field(obj, "instruction", where, required=True)
    inp = _str_field(obj, "input", where, required=False)
    output = _str_field(obj, "output", where, required=require_output)
    system = _str_field(obj, "system", where, required=False) or None
    history_raw = obj.get("history") or []
    if not isinstance(history_raw, list):
        raise DataError(f"{where}: field 'history' must be a list of [user, assistant] pairs")
    history = []
    for j, pair in enumerate(history_raw):
        if not (
            isinstance(pair, list | tuple)
            and len(pair) == 2
            and all(isinstance(t, str) for t in pair)
        ):
            raise DataError(f"{where}: history[{j}] must be a [user, assistant] pair of strings")
        history.append((pair[0], pair[1]))
    return Record(
        instruction=instruction, input=inp, output=output, system=system, history=history, raw=obj
    )


def load_records(path: str | Path, require_output: bool = True) -> list[Record]:
    records = [parse_record(obj, where, require_output) for where, obj in read_json_records(path)]
    if not records:
        raise DataError(f"{path}: no records")
    return records


def split_records(
    records: list, fractions: tuple[float, float, float], seed: int
) -> tuple[list, list, list]:
    """Seeded shuffle, then train/val/test by fractions (the seed's 85/5/10 by default)."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(
            f"split fractions must be three non-negative numbers summing to 1, got {fractions}"
        )
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n = len(records)
    n_train = int(n * fractions[0])
    n_test = int(n * fractions[2])
    n_val = n - n_train - n_test
    shuffled = [records[i] for i in order]
    return shuffled[:n_train], shuffled[n_train : n_train + n_val], shuffled[n_train + n_val :]
