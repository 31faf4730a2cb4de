"""Pairwise judging: two runs' answers to the same records, asked in both position orders.

For each record the judge sees (A = run a, B = run b) and then (A = run b, B = run a). A verdict
counts only when both orders agree (position-consistent); when they disagree the record is a tie
(judges favour one position, so one order alone is not evidence). A record where either order
could not be read is a failure, counted and excluded from wins/ties/losses.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from typing import Any

from tunelab.data.records import Record
from tunelab.judge.backends import JudgeBackend, JudgeRequestError
from tunelab.judge.parsing import OK
from tunelab.judge.prompts import PairwisePrompt

log = logging.getLogger(__name__)


def _key(r: Record) -> tuple:
    return (r.system or "", tuple(r.history), r.instruction, r.input, r.output)


def match_answers(
    records_a: list[Record], answers_a: list[str], records_b: list[Record], answers_b: list[str]
) -> tuple[list[tuple[Record, str, str]], int, int]:
    """Pairs answers to the same record (by instruction, input, reference, history, system).

    Returns (matched triples, unmatched in a, unmatched in b); duplicates pair in order.
    """
    pool: dict[tuple, list[int]] = defaultdict(list)
    for j, r in enumerate(records_b):
        pool[_key(r)].append(j)
    matched, used_b = [], 0
    unmatched_a = 0
    for r, a in zip(records_a, answers_a, strict=True):
        js = pool.get(_key(r))
        if js:
            matched.append((r, a, answers_b[js.pop(0)]))
            used_b += 1
        else:
            unmatched_a += 1
    return matched, unmatched_a, len(records_b) - used_b


def outcome(first: str | None, second: str | None) -> tuple[str | None, bool | None]:
    """Combine the two orders' verdicts into run a's outcome and whether they agreed.

    first: the verdict with a in position A; second: with b in position A.
    """
    if first is None or second is None:
        return None, None
    a_first = {"A": "win", "B": "loss", "tie": "tie"}[first]
    a_second = {"A": "loss", "B": "win", "tie": "tie"}[second]
    consistent = a_first == a_second
    return (a_first if consistent else "tie"), consistent


def compare(
    backend: JudgeBackend,
    prompt: PairwisePrompt,
    matched: list[tuple[Record, str, str]],
    names: tuple[str, str] = ("a", "b"),
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows (both verdicts, raw texts, outcome for run a) and the summary."""
    prompts = []
    for rec, a, b in matched:
        prompts += [prompt.render(rec, a, b), prompt.render(rec, b, a)]
    raws = backend.complete_many(prompts, prompt.answer_prefix)
    rows = []
    for i, (rec, a, b) in enumerate(matched):
        parsed = []
        for raw in raws[2 * i : 2 * i + 2]:
            if isinstance(raw, JudgeRequestError):
                parsed.append((None, raw.status, None, str(raw)))
            else:
                v, status = prompt.parse(raw)
                parsed.append((v, status, raw, None))
        result, consistent = outcome(parsed[0][0], parsed[1][0])
        rows.append(
            {
                "index": i,
                "instruction": rec.instruction,
                "input": rec.input,
                "reference": rec.output,
                f"response_{names[0]}": a,
                f"response_{names[1]}": b,
                "verdict_a_first": parsed[0][0],
                "status_a_first": parsed[0][1],
                "judge_raw_a_first": parsed[0][2],
                "verdict_b_first": parsed[1][0],
                "status_b_first": parsed[1][1],
                "judge_raw_b_first": parsed[1][2],
                "errors": [p[3] for p in parsed if p[3]],
                "outcome": result,  # for run a: win / tie / loss; None when unreadable
                "position_consistent": consistent,
            }
        )
    return rows, summarize(rows)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    counts = Counter(r["outcome"] for r in rows)
    judged = [r for r in rows if r["outcome"] is not None]
    statuses = Counter(
        s for r in rows for s in (r["status_a_first"], r["status_b_first"]) if s != OK
    )
    n = len(judged)
    consistent = sum(1 for r in judged if r["position_consistent"])
    return {
        "n": len(rows),
        "judged": n,
        "wins": counts["win"],
        "ties": counts["tie"],
        "losses": counts["loss"],
        "failures": len(rows) - n,
        "failure_statuses": dict(statuses),
        "position_consistency": consistent / n if n else None,
        "win_rate": (counts["win"] + 0.5 * counts["tie"]) / n if n else None,
    }
