"""The embedded multiple-choice sets: up to date with their builders, valid, right answers."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tunelab.data.builders import mc_cloze, mc_python
from tunelab.evaluation.items import load_items
from tunelab.evaluation.sets import EMBEDDED_DIR, EMBEDDED_SETS, ChoiceSet


@pytest.mark.parametrize("builder", [mc_python, mc_cloze], ids=["python", "cloze"])
def test_embedded_sets_are_up_to_date(builder):
    assert builder.main(["--check"]) == 0


@pytest.mark.parametrize("name", sorted(EMBEDDED_SETS))
def test_embedded_sets_load_and_have_300_items(name):
    items, dev = ChoiceSet(embedded=name).load()
    assert len(items) >= 300 and dev == []
    assert all(len(it.choices) == 4 for it in items)
    positions = {it.answer for it in items}
    assert positions == {0, 1, 2, 3}


def _python_rows() -> list[dict]:
    path = EMBEDDED_DIR / EMBEDDED_SETS["python_semantics"][0]
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_python_answers_are_what_the_snippets_print():
    rows = _python_rows()
    for row in rows:
        assert mc_python.run(row["code"]) == row["choices"][row["answer"]]
        assert row["question"] == f"```python\n{row['code']}\n```\nOutput:"
    assert len(rows) == 20 * 16
    assert Counter(r["subject"] for r in rows) == {f: 16 for f in mc_python.FAMILIES}


def test_python_choices_share_the_answers_shape_and_positions_are_balanced():
    rows = _python_rows()
    for row in rows:
        shapes = {mc_python.shape(c) for c in row["choices"]}
        assert len(shapes) == 1 and len(set(row["choices"])) == 4, row["choices"]
    assert Counter(r["answer"] for r in rows) == {0: 80, 1: 80, 2: 80, 3: 80}
    # interleaved: the first 20 items are one of each family, the first 64 balance positions
    assert [r["subject"] for r in rows[:20]] == list(mc_python.FAMILIES)
    assert Counter(r["answer"] for r in rows[:64]) == {0: 16, 1: 16, 2: 16, 3: 16}


def test_shape_keeps_length_and_punctuation():
    assert mc_python.shape("[12, 4]") == "[99, 9]"
    assert mc_python.shape("HeLLo 7") == "aaaaa 9"
    assert mc_python.shape("-3") != mc_python.shape("3")


def test_cloze_choices_differ_only_in_the_word():
    for it in load_items(EMBEDDED_DIR / EMBEDDED_SETS["prose_cloze"][0]):
        rests = {c.split(" ", 1)[1] if " " in c else c[-1] for c in it.choices}
        assert len(rests) == 1, it.choices
        words = [c.split(" ", 1)[0].rstrip(".") for c in it.choices]
        assert len(set(words)) == 4 and it.question[0].isupper()
