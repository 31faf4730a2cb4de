"""Multiple-choice items: reading and validating JSONL `{question, choices, answer, subject?}` and
MMLU's CSV (`question,A,B,C,D,answer`), with one-line errors naming the file and line.

`answer` is the index of the right choice (0-based int), its letter (`"B"`), or the text of the
right choice itself. Problems found at load time: a missing or empty question, fewer than two
choices, duplicate choices, an answer that is not among the choices.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.data.records import DataError

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass
class ChoiceItem:
    """One question: `choices[answer]` is right; `subject` groups the per-subject accuracy."""

    question: str
    choices: list[str]
    answer: int
    subject: str = "all"
    where: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "question": self.question,
            "choices": list(self.choices),
            "answer": self.answer,
            "subject": self.subject,
        }
        out.update(self.extra)
        return out


def _answer_index(answer: Any, choices: list[str], where: str) -> int:
    if isinstance(answer, bool):
        raise DataError(f"{where}: field 'answer' must be an index, a letter or a choice, not bool")
    if isinstance(answer, int):
        if not 0 <= answer < len(choices):
            raise DataError(
                f"{where}: answer {answer} is not among the {len(choices)} choices "
                f"(an index 0..{len(choices) - 1})"
            )
        return answer
    if isinstance(answer, str):
        if answer in choices:
            return choices.index(answer)
        a = answer.strip()
        if len(a) == 1 and a.upper() in LETTERS[: len(choices)]:
            return LETTERS.index(a.upper())
        raise DataError(
            f"{where}: answer {answer!r} is not among the choices (give an index, a letter "
            f"A-{LETTERS[len(choices) - 1]} or the text of a choice)"
        )
    raise DataError(
        f"{where}: field 'answer' must be an int, a letter or a choice, got {type(answer).__name__}"
    )


def make_item(obj: Any, where: str) -> ChoiceItem:
    """Validate one record (a dict) and return the item; raises DataError naming `where`."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key in ("question", "choices", "answer"):
        if key not in obj or obj[key] is None:
            raise DataError(f"{where}: missing field {key!r}")
    question, choices = obj["question"], obj["choices"]
    if not isinstance(question, str):
        raise DataError(
            f"{where}: field 'question' must be a string, got {type(question).__name__}"
        )
    if not question.strip():
        raise DataError(f"{where}: field 'question' is empty")
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise DataError(f"{where}: field 'choices' must be a list of strings")
    if len(choices) < 2:
        raise DataError(f"{where}: {len(choices)} choice(s); a question needs at least 2")
    if len(choices) > len(LETTERS):
        raise DataError(f"{where}: {len(choices)} choices; at most {len(LETTERS)} are supported")
    if any(not c.strip() for c in choices):
        raise DataError(f"{where}: choice {[c.strip() for c in choices].index('')} is empty")
    seen: dict[str, int] = {}
    for i, c in enumerate(choices):
        if c.strip() in seen:
            raise DataError(
                f"{where}: choices {seen[c.strip()]} and {i} are the same ({c.strip()!r})"
            )
        seen[c.strip()] = i
    subject = obj.get("subject", "all")
    if not isinstance(subject, str) or not subject.strip():
        raise DataError(f"{where}: field 'subject' must be a non-empty string")
    answer = _answer_index(obj["answer"], choices, where)
    extra = {k: v for k, v in obj.items() if k not in ("question", "choices", "answer", "subject")}
    return ChoiceItem(question, list(choices), answer, subject, where, extra)


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 (byte offset {e.start}): {e.reason}") from None


def read_jsonl_items(path: Path) -> list[ChoiceItem]:
    items = []
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}:{lineno}: malformed JSON line ({e.msg} at column {e.colno})"
            ) from None
        items.append(make_item(obj, f"{path}:{lineno}"))
    return items


def read_mmlu_csv(path: Path, subject: str | None = None) -> list[ChoiceItem]:
    """MMLU's CSV: no header, `question,A,B,C,D,answer` (the answer a letter). The subject is
    `subject`, else the file name without MMLU's `_dev`/`_val`/`_test` suffix."""
    if subject is None:
        subject = path.stem
        for suffix in ("_dev", "_val", "_test"):
            subject = subject.removesuffix(suffix)
    items = []
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    for row in reader:
        where = f"{path}:{reader.line_num}"
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < 4:
            raise DataError(
                f"{where}: {len(row)} columns; MMLU CSV rows are question, 2+ choices, answer"
            )
        obj = {
            "question": row[0],
            "choices": row[1:-1],
            "answer": row[-1].strip(),
            "subject": subject,
        }
        if not (len(obj["answer"]) == 1 and obj["answer"].upper() in LETTERS):
            raise DataError(f"{where}: last column {row[-1]!r} must be the answer's letter")
        items.append(make_item(obj, where))
    return items


def load_items(path: str | Path, fmt: str = "auto", subject: str | None = None) -> list[ChoiceItem]:
    """Items of one file (`.jsonl`/`.json` lines, or `.csv` in MMLU's layout) or of every such
    file in a folder (sorted by name); fmt: auto | jsonl | mmlu_csv."""
    path = Path(path)
    if fmt not in ("auto", "jsonl", "mmlu_csv"):
        raise ValueError(f"data.format: expected auto, jsonl or mmlu_csv, got {fmt!r}")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".json", ".csv"))
        if not files:
            raise DataError(f"{path}: no .jsonl or .csv files in this folder")
        return [it for f in files for it in load_items(f, fmt, subject)]
    if fmt == "mmlu_csv" or (fmt == "auto" and path.suffix == ".csv"):
        items = read_mmlu_csv(path, subject)
    else:
        items = read_jsonl_items(path)
        if subject is not None:
            for it in items:
                it.subject = subject
    if not items:
        raise DataError(f"{path}: no records")
    return items
