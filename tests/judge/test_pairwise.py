"""Pairwise judging: both position orders, position consistency, matching two runs' answers."""

from __future__ import annotations

import json

import pytest

from tests.judge.stub_server import ScriptedServer, ollama_reply
from tunelab.data.records import Record
from tunelab.judge import OllamaJudge
from tunelab.judge.pairwise import compare, match_answers, outcome
from tunelab.judge.prompts import PairwisePrompt


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ("A", "B", ("win", True)),  # a preferred in both positions
        ("B", "A", ("loss", True)),
        ("tie", "tie", ("tie", True)),
        ("A", "A", ("tie", False)),  # always the first position: no evidence either way
        ("B", "B", ("tie", False)),
        ("A", "tie", ("tie", False)),
        (None, "A", (None, None)),
    ],
)
def test_outcome_combines_both_orders(first, second, expected):
    assert outcome(first, second) == expected


def test_compare_counts_wins_ties_losses_and_consistency():
    records = [Record(f"Question {i}?", "", f"ref {i}") for i in range(5)]
    verdicts = ["A", "B", "A", "A", "tie", "tie", "B", "A", "no idea", "A"]
    with ScriptedServer([ollama_reply(v) for v in verdicts]) as stub:
        backend = OllamaJudge(model="stub", host=stub.url, retries=0)
        matched = [(r, f"a{i}", f"b{i}") for i, r in enumerate(records)]
        rows, summary = compare(backend, PairwisePrompt(), matched)
        prompts = [json.loads(req["body"])["messages"][0]["content"] for req in stub.requests]
    # Each record is asked twice, with the answers swapped.
    assert "Response A:\na0" in prompts[0] and "Response B:\nb0" in prompts[0]
    assert "Response A:\nb0" in prompts[1] and "Response B:\na0" in prompts[1]
    assert [r["outcome"] for r in rows] == ["win", "tie", "tie", "loss", None]
    assert [r["position_consistent"] for r in rows] == [True, False, True, True, None]
    assert rows[4]["status_a_first"] == "no_verdict" and rows[4]["judge_raw_a_first"] == "no idea"
    assert summary == {
        "n": 5,
        "judged": 4,
        "wins": 1,
        "ties": 2,
        "losses": 1,
        "failures": 1,
        "failure_statuses": {"no_verdict": 1},
        "position_consistency": 0.75,
        "win_rate": 0.5,
    }


def test_match_answers_pairs_by_record_and_counts_the_rest():
    a = [Record("q1", "", "r1"), Record("q2", "", "r2"), Record("q3", "", "r3")]
    b = [Record("q2", "", "r2"), Record("q1", "", "r1"), Record("q4", "", "r4")]
    matched, only_a, only_b = match_answers(a, ["a1", "a2", "a3"], b, ["b2", "b1", "b4"])
    assert [(r.instruction, x, y) for r, x, y in matched] == [
        ("q1", "a1", "b1"),
        ("q2", "a2", "b2"),
    ]
    assert (only_a, only_b) == (1, 1)
