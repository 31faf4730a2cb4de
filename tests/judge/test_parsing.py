"""Score and verdict parsing on the kinds of answers judges give (the seed's examples first)."""

from __future__ import annotations

import pytest

from tunelab.data.records import Record
from tunelab.judge.parsing import parse_after_marker, parse_score, parse_verdict
from tunelab.judge.prompts import (
    BUILTIN,
    PairwisePrompt,
    get_prompt,
    seed_format_input,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # The seed's Llama 3 answers to "Respond with the integer number only."
        ("85", (85, "ok")),
        ("95\n", (95, "ok")),
        ("0", (0, "ok")),
        ("100", (100, "ok")),
        ("Score: 92", (92, "ok")),
        ("**Score:** 92", (92, "ok")),
        ("I would rate this response 80.", (80, "ok")),
        ("85/100", (85, "ok")),
        ("85 out of 100", (85, "ok")),
        ("72.5", (72.5, "ok")),
        ("The score is 105", (None, "out_of_range")),
        ("-3", (None, "out_of_range")),
        ("", (None, "empty")),
        ("   \n", (None, "empty")),
        (None, (None, "empty")),
        ("I cannot rate this", (None, "no_number")),
        ("Somewhere between 70 and 80.", (None, "ambiguous")),
        # A labelled score wins over other numbers; the last label is the final verdict.
        ("The response lists 3 items. Score: 60", (60, "ok")),
        ("Initial score: 40. After review, final score: 55", (55, "ok")),
        # Numbers glued to words are not scores.
        ("gpt2 says hi", (None, "no_number")),
    ],
)
def test_parse_score_0_100(text, expected):
    assert parse_score(text, 0, 100) == expected


RUBRIC_ANSWER = """Feedback: The response names the right module but adds an unrelated claim about
version 3.12, which is not in the reference answer.
Total rating: 4"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (RUBRIC_ANSWER, (4, "ok")),
        ("Feedback: good.\n**Total rating:** 5", (5, "ok")),
        ("Total rating: 4/5", (4, "ok")),
        ("Total rating: [3]", (3, "ok")),
        ("total rating: 2", (2, "ok")),
        # The LAST "Total rating:" counts (a judge that corrects itself, or echoes the format).
        ("Total rating: (a number from 1 to 5)\nFeedback: fine.\nTotal rating: 3", (3, "ok")),
        ("Total rating: 7", (None, "out_of_range")),
        ("Total rating: 0", (None, "out_of_range")),
        ("Feedback: it is fine.\nTotal rating: excellent", (None, "no_number")),
        ("Feedback: it is fine, I give it 4 stars.", (None, "no_number")),
        ("4", (4, "ok")),  # only the number: the judge skipped the format
        ("", (None, "empty")),
    ],
)
def test_parse_rubric_total_rating(text, expected):
    assert parse_after_marker(text, "Total rating:", 1, 5) == expected
    assert BUILTIN["rubric_1_5"].parse(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A", ("A", "ok")),
        ("b", ("B", "ok")),
        ("**Tie.**", ("tie", "ok")),
        ("Response B", ("B", "ok")),
        ("Verdict: A", ("A", "ok")),
        ("[[B]]", ("B", "ok")),
        ("[[C]]", ("tie", "ok")),
        ("Response A is clearer and correct.", ("A", "ok")),
        ("Both are equally good.", ("tie", "ok")),
        ("Response A is better than Response B", (None, "ambiguous")),
        ("I like the second one", (None, "no_verdict")),
        ("", (None, "empty")),
    ],
)
def test_parse_verdict(text, expected):
    assert parse_verdict(text) == expected


def test_seed_prompt_is_word_for_word():
    entry = Record(instruction="Rewrite the sentence.", input="The car is fast.", output="x")
    prompt = BUILTIN["score_0_100"].render(entry, "The vehicle is quick.")
    expected_input = (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nRewrite the sentence.\n\n### Input:\n"
        "The car is fast."
    )
    assert seed_format_input(entry) == expected_input
    assert prompt == (
        f"Given the input `{expected_input}` and correct output `x`, score the model response "
        "`The vehicle is quick.` on a scale from 0 to 100, where 100 is the best score. "
        "Respond with the integer number only."
    )
    # No input: no "### Input:" section, as in the seed's format_input.
    assert "### Input" not in seed_format_input(Record(instruction="Say hi."))


def test_rubric_prompt_asks_for_total_rating_and_fills_fields():
    text = BUILTIN["rubric_1_5"].render(Record("Name a colour.", "", "red"), "blue {x}")
    assert text.rstrip().endswith("Total rating: (a number from 1 to 5)")
    assert "Name a colour." in text and "\nred\n" in text and "blue {x}" in text


def test_custom_template_from_config():
    p = get_prompt(
        "custom",
        template='Q: {instruction} Ref: {reference} A: {response} JSON like {"s": 1}. Grade:',
        scale=[1, 10],
        marker="Grade:",
    )
    assert p.render(Record("q?", "", "r"), "a") == 'Q: q? Ref: r A: a JSON like {"s": 1}. Grade:'
    assert p.parse("Grade: 7") == (7, "ok")
    assert p.parse("Grade: 11") == (None, "out_of_range")
    assert p.bins() == [0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5, 9.5, 10.5]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "custom", "template": "{response}"}, "judge.scale"),
        ({"name": "custom", "scale": [0, 1]}, "needs judge.template"),
        ({"name": "custom", "template": "{answer}", "scale": [0, 1]}, "unknown placeholder"),
        ({"name": "custom", "template": "{instruction}", "scale": [0, 1]}, "must contain"),
        ({"name": "custom", "template": "{response}", "scale": [5, 1]}, "low < high"),
        ({"name": "best"}, "unknown prompt 'best'"),
        ({"name": "rubric_1_5", "template": "{response}"}, "only used with"),
    ],
)
def test_bad_prompt_configs_give_clear_errors(kwargs, message):
    with pytest.raises((ValueError, KeyError), match=message):
        get_prompt(**kwargs)


def test_pairwise_prompt_needs_both_responses():
    with pytest.raises(ValueError, match="response_b"):
        PairwisePrompt(template="{response_a}")
    p = PairwisePrompt()
    text = p.render(Record("q", "", "r"), "first", "second")
    assert "Response A:\nfirst" in text and "Response B:\nsecond" in text
