"""Turning a judge's text into a score: pure functions returning `(score | None, status)`.

Nothing is skipped silently (the seed dropped answers `int()` could not read): every answer gets
a status, and everything but `ok` is counted as a parse failure and reported.

Statuses: `ok`, `empty` (no text), `no_number` (no score found), `out_of_range` (a number outside
the scale), `ambiguous` (several different candidate scores and no label saying which one);
pairwise verdicts add `no_verdict`.
Backends add `server_error` (5xx or 4xx after retries), `bad_response` (a body that is not
the protocol's JSON) and `prompt_too_long` (local judge); see `tunelab.judge.backends`.
"""

from __future__ import annotations

import re

OK = "ok"
EMPTY = "empty"
NO_NUMBER = "no_number"
OUT_OF_RANGE = "out_of_range"
AMBIGUOUS = "ambiguous"
SERVER_ERROR = "server_error"
BAD_RESPONSE = "bad_response"
NO_VERDICT = "no_verdict"
PROMPT_TOO_LONG = "prompt_too_long"
STATUSES = (
    OK,
    EMPTY,
    NO_NUMBER,
    OUT_OF_RANGE,
    AMBIGUOUS,
    SERVER_ERROR,
    BAD_RESPONSE,
    PROMPT_TOO_LONG,
    NO_VERDICT,
)

# A number, not glued to letters or other digits ("gpt2", "v1.5" and "3rd" are not scores).
_NUMBER = r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?![\w]|\.\d)"
_NUMBER_RE = re.compile(_NUMBER)
# "Score: 92", "score is 92", "Rating = 4", "**Score:** 92", "I would rate it 80".
_LABELLED_RE = re.compile(
    r"(?:score|rating|rate\s+(?:it|this|the\s+response)|grade)\b[^\d\n+-]{0,20}?(" + _NUMBER + ")",
    re.IGNORECASE,
)
# A denominator ("92/100", "92 out of 100") is the scale, not another candidate.
_DENOMINATOR_RE = re.compile(r"(?:/|\bout\s+of\b)\s*" + _NUMBER, re.IGNORECASE)
_MARKUP_RE = re.compile(r"[*_`#]+")


def _number(text: str) -> float:
    value = float(text)
    return int(value) if value.is_integer() else value


def _in_range(value: float, low: float, high: float) -> tuple[float | None, str]:
    return (value, OK) if low <= value <= high else (None, OUT_OF_RANGE)


def parse_score(text: str | None, low: float = 0, high: float = 100) -> tuple[float | None, str]:
    """A score on [low, high] from a free-form answer (the seed's 0-100 prompt).

    "85" -> 85; "Score: 92" -> 92; "85/100" -> 85; "The score is 105" -> out_of_range;
    "I cannot rate this" -> no_number; "between 70 and 80" -> ambiguous.
    """
    if text is None or not text.strip():
        return None, EMPTY
    clean = _MARKUP_RE.sub("", text).strip()
    try:  # the answer the prompt asks for: the integer alone
        return _in_range(_number(clean.rstrip(".")), low, high)
    except ValueError:
        pass
    labelled = [_number(m.group(1)) for m in _LABELLED_RE.finditer(clean)]
    if labelled:
        return _in_range(labelled[-1], low, high)  # the last label is the final verdict
    candidates = {_number(m.group()) for m in _NUMBER_RE.finditer(_DENOMINATOR_RE.sub("", clean))}
    if not candidates:
        return None, NO_NUMBER
    if len(candidates) > 1:
        return None, AMBIGUOUS
    return _in_range(candidates.pop(), low, high)


def parse_after_marker(
    text: str | None, marker: str = "Total rating:", low: float = 1, high: float = 5
) -> tuple[float | None, str]:
    """The number after the LAST `marker` (the rubric prompt's "Total rating: 4").

    Markdown around the marker and number is ignored ("**Total rating:** 4", "Total rating: 4/5").
    An answer that is only a number (the judge skipped the format) is read as that number; any
    other answer without the marker has no rating: no_number.
    """
    if text is None or not text.strip():
        return None, EMPTY
    clean = _MARKUP_RE.sub("", text)
    bare_marker = _MARKUP_RE.sub("", marker)
    pos = clean.lower().rfind(bare_marker.lower())
    if pos < 0:
        try:
            return _in_range(_number(clean.strip().rstrip(".")), low, high)
        except ValueError:
            return None, NO_NUMBER
    tail = clean[pos + len(bare_marker) :]
    m = re.match(r"\s*\[?\s*(" + _NUMBER + ")", tail)
    if not m:
        return None, NO_NUMBER
    return _in_range(_number(m.group(1)), low, high)


# Pairwise verdicts --------------------------------------------------------------------------
_VERDICT_ONLY_RE = re.compile(r"^\W*(?:response\s+|answer\s+)?(a|b|tie)\W*$", re.IGNORECASE)
_LABELLED_VERDICT_RE = re.compile(r"\b(?:verdict|winner)\s*:\s*(a|b|tie)\b", re.IGNORECASE)
_BRACKET_RE = re.compile(r"\[\[\s*(a|b|tie|c)\s*\]\]", re.IGNORECASE)
_NAMED_RE = re.compile(r"\b(?:response|answer|assistant)\s+(a|b)\b", re.IGNORECASE)
_TIE_RE = re.compile(r"\b(?:tie|equally good|equal)\b", re.IGNORECASE)


def parse_verdict(text: str | None) -> tuple[str | None, str]:
    """A pairwise verdict: "A", "B" or "tie".

    "A", "**B**", "Tie.", "Verdict: A" (the last one counts), "[[A]]" (MT-Bench style; [[C]] is a
    tie) and "Response B is better" are read; an answer naming both responses is ambiguous.
    """
    if text is None or not text.strip():
        return None, EMPTY
    clean = _MARKUP_RE.sub("", text).strip()
    m = _VERDICT_ONLY_RE.match(clean)
    if m:
        return _verdict(m.group(1)), OK
    labelled = _LABELLED_VERDICT_RE.findall(clean)
    if labelled:
        return _verdict(labelled[-1]), OK
    brackets = {_verdict(v) for v in _BRACKET_RE.findall(clean)}
    if len(brackets) == 1:
        return brackets.pop(), OK
    if len(brackets) > 1:
        return None, AMBIGUOUS
    named = {_verdict(v) for v in _NAMED_RE.findall(clean)}
    tie = bool(_TIE_RE.search(clean))
    if len(named) == 1 and not tie:
        return named.pop(), OK
    if not named and tie:
        return "tie", OK
    if named or tie:
        return None, AMBIGUOUS
    return None, NO_VERDICT


def _verdict(v: str) -> str:
    v = v.lower()
    return "tie" if v in ("tie", "c") else v.upper()
