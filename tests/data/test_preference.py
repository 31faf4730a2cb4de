"""Preference records: both input forms, load-time errors with file:line, truncation, batches."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from tunelab.data.builders import preferences as builder
from tunelab.data.preference import (
    EMBEDDED_PREFERENCES,
    PairExample,
    PreferenceDataModule,
    PreferencePair,
    collate_pairs,
    encode_pair,
    load_preferences,
)
from tunelab.data.prompts import get_style
from tunelab.data.records import DataError, Record
from tunelab.models.tokenizer import tokenizer_by_name


@pytest.fixture(scope="module")
def gpt2():
    return tokenizer_by_name("gpt2")


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_both_record_forms_and_the_conversational_form(tmp_path):
    path = tmp_path / "p.jsonl"
    write_jsonl(
        path,
        [
            {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No.", "system": "Be kind."},
            {
                "instruction": "Add.",
                "input": "2 + 2",
                "output": "4",
                "chosen": "4",
                "rejected": "5",
            },
            {
                "prompt": [
                    {"role": "system", "content": "S"},
                    {"role": "user", "content": "u1"},
                    {"role": "assistant", "content": "a1"},
                    {"role": "user", "content": "u2"},
                ],
                "chosen": [{"role": "assistant", "content": "good"}],
                "rejected": [{"role": "assistant", "content": "bad"}],
            },
        ],
    )
    a, b, c = load_preferences(path)
    assert (a.record.instruction, a.record.system, a.chosen, a.rejected) == (
        "Say hi.",
        "Be kind.",
        "Hi!",
        "No.",
    )
    assert (b.record.instruction, b.record.input, b.chosen, b.rejected) == (
        "Add.",
        "2 + 2",
        "4",
        "5",
    )
    assert b.record.output == "4"  # the chosen answer: what responses.json compares against
    assert c.record.history == [("u1", "a1")] and c.record.instruction == "u2"
    assert (c.record.system, c.chosen, c.rejected) == ("S", "good", "bad")
    # The prompt style formats the prompt.
    assert (
        get_style("alpaca")
        .prompt(b.record)
        .endswith("### Instruction:\nAdd.\n\n### Input:\n2 + 2\n\n### Response:\n")
    )


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "q", "chosen": "a"}, ":2: missing field 'rejected'"),
        ({"instruction": "q", "rejected": "a"}, ":2: missing field 'chosen'"),
        (
            {"prompt": "q", "chosen": "a", "rejected": "a"},
            ":2: 'chosen' and 'rejected' are identical",
        ),
        ({"chosen": "a", "rejected": "b"}, ":2: missing field 'prompt' (or 'instruction')"),
        ({"prompt": "q", "chosen": "  ", "rejected": "b"}, ":2: field 'chosen' is empty"),
        ({"prompt": "q", "chosen": "a", "rejected": 3}, ":2: field 'rejected' must be a string"),
        (
            {
                "prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}],
                "chosen": "a",
                "rejected": "b",
            },
            ":2: field 'prompt' as messages must end with a user message",
        ),
        (
            {"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
            ":2: field 'chosen' as a list must hold exactly one assistant message",
        ),
    ],
)
def test_bad_records_name_file_and_line(tmp_path, row, message):
    path = write_jsonl(
        tmp_path / "bad.jsonl", [{"prompt": "ok", "chosen": "a", "rejected": "b"}, row]
    )
    with pytest.raises(DataError) as e:
        load_preferences(path)
    assert str(e.value).startswith(str(path)) and message in str(e.value)


def test_identical_pairs_can_be_dropped_and_are_counted(tmp_path, caplog):
    rows = [
        {"prompt": "q", "chosen": "a", "rejected": "b"},
        {"prompt": "q", "chosen": "a", "rejected": "a"},
    ]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with caplog.at_level("WARNING"):
        pairs = load_preferences(path, identical_pairs="drop")
    assert len(pairs) == 1 and "dropped 1 pairs" in caplog.text


def test_truncation_keeps_prompt_end_and_completion_start(gpt2):
    style = get_style("alpaca")
    pair = PreferencePair(
        Record(instruction="word " * 40), "one two three four five six seven", "no"
    )
    full_prompt = gpt2.encode(style.prompt(pair.record))
    full_chosen = gpt2.encode(pair.chosen) + [gpt2.eos_id]
    full_rejected = gpt2.encode(pair.rejected) + [gpt2.eos_id]
    ex = encode_pair(pair, style, gpt2, max_length=24, max_prompt_length=20)
    assert ex.prompt == full_prompt[-20:]  # the end of the prompt (the question) is kept
    assert ex.chosen == full_chosen[:4]  # the start of the completion; end-of-text is lost
    assert ex.rejected == full_rejected  # short enough: untouched, ends with end-of-text
    assert ex.truncated == {"prompt": True, "chosen": True, "rejected": False}


def test_datamodule_counts_truncation_and_serves_test_records(tmp_path, gpt2, caplog):
    rows = [
        {
            "prompt": f"Question {i}: " + "very " * (30 if i < 3 else 1),
            "chosen": "yes " * (20 if i == 5 else 1),
            "rejected": "no",
        }
        for i in range(8)
    ]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    dm = PreferenceDataModule(
        train_path=str(path), test_path=str(path), max_length=40, max_prompt_length=30
    )
    dm.connect(gpt2, "alpaca")
    with caplog.at_level("WARNING"):
        dm.setup()
    # alpaca's preamble alone is ~30 tokens: every prompt here is cut to its last 30 tokens,
    # and the 20-word answer does not fit in the 10 tokens left.
    counts = dm.truncation["train"]
    assert counts["chosen"] == 1 and counts["rejected"] == 0 and counts["prompt"] >= 3
    assert "kept their last 30 tokens" in caplog.text
    assert all(
        len(ex.prompt) <= 30 and len(ex.prompt) + len(ex.chosen) <= 40
        for ex in dm.datasets["train"].examples
    )
    assert [r.output for r in dm.test_records()] == [r["chosen"] for r in rows]


def test_prompt_limit_must_leave_room(gpt2):
    dm = PreferenceDataModule(path="unused", max_length=64, max_prompt_length=64)
    dm.connect(gpt2, "alpaca")
    with pytest.raises(ValueError, match="data.max_prompt_length"):
        dm.lengths()
    dm.max_prompt_length = None
    assert dm.lengths() == (64, 32)


def _examples() -> list[PairExample]:
    return [
        PairExample([1, 2, 3], [10, 11, 0], [20, 0], index=7, record=Record("a")),
        PairExample([4, 5], [12, 0], [21, 22, 23, 0], index=3, record=Record("b")),
    ]


def test_collate_puts_chosen_rows_first_and_masks_the_prompt():
    b = collate_pairs(_examples(), pad_id=0)
    assert b["index"].tolist() == [7, 3]
    assert b["input_ids"].tolist() == [
        [1, 2, 3, 10, 11],  # prompt + chosen, without its last token
        [4, 5, 12, 0, 0],
        [1, 2, 3, 20, 0],  # prompt + rejected (the 0 at the end is padding)
        [4, 5, 21, 22, 23],
    ]
    m = -100
    assert b["targets"].tolist() == [
        [m, m, 10, 11, 0],  # only the completion (and its end-of-text) counts
        [m, 12, 0, m, m],
        [m, m, 20, 0, m],
        [m, 21, 22, 23, 0],
    ]
    assert "ref_chosen_logps" not in b


def test_collate_carries_precomputed_reference_logps():
    exs = _examples()
    exs[0].ref_logps, exs[1].ref_logps = (-1.5, -2.5), (-3.0, -4.0)
    b = collate_pairs(exs, pad_id=0)
    assert b["ref_chosen_logps"].tolist() == [-1.5, -3.0]
    assert b["ref_rejected_logps"].tolist() == [-2.5, -4.0]


def test_packed_collate_holds_the_same_sequences():
    b = collate_pairs(_examples(), pad_id=0, packing=True, pack_length=10)
    # Input lengths 5, 3, 4, 5 (17 tokens) -> 2 balanced rows, longest first into the emptier
    # row: 0 -> row 0, 3 -> row 1, 2 -> row 0 (5 <= 5, lower index), 1 -> row 1; width 9, not 10.
    assert b["input_ids"].tolist() == [
        [1, 2, 3, 10, 11, 1, 2, 3, 20],
        [4, 5, 12, 4, 5, 21, 22, 23, 0],
    ]
    assert b["positions"].tolist() == [
        [0, 1, 2, 3, 4, 0, 1, 2, 3],
        [0, 1, 2, 0, 1, 2, 3, 4, 0],
    ]
    assert b["doc_ids"].tolist() == [[0] * 5 + [2] * 4, [1] * 3 + [3] * 5 + [-1]]
    # Every sequence's counted targets are, in order, those of its padded row.
    padded = collate_pairs(_examples(), pad_id=0)
    for s in range(4):
        packed_t = b["targets"][(b["seq_ids"] == s) & (b["targets"] != -100)]
        padded_t = padded["targets"][s][padded["targets"][s] != -100]
        assert packed_t.tolist() == padded_t.tolist()


def test_embedded_preferences_are_reproducible_and_varied():
    pairs = json.loads(EMBEDDED_PREFERENCES.read_text(encoding="utf-8"))
    assert len(pairs) >= 500
    # Byte for byte what the builder makes now (it reads the committed instructions.json).
    assert builder.render(builder.build_pairs()) == EMBEDDED_PREFERENCES.read_text(encoding="utf-8")
    kinds = Counter(p["rejected_kind"] for p in pairs)
    assert set(kinds) == {"wrong", "evasive", "rude", "padded"} and min(kinds.values()) >= 100
    instructions = json.loads(builder.SOURCE.read_text(encoding="utf-8"))
    for p in pairs:
        src = instructions[p["source_index"]]
        assert (p["instruction"], p["input"], p["chosen"]) == (
            src["instruction"],
            src["input"],
            src["output"],
        )
        assert p["rejected"].strip() != p["chosen"].strip()
        if p["rejected_kind"] in ("rude", "padded"):
            assert p["chosen"] in p["rejected"]  # right content, worse form
    assert len(load_preferences(EMBEDDED_PREFERENCES)) == len(pairs)  # all pass validation


def test_builder_check_mode(tmp_path):
    out = tmp_path / "prefs.json"
    assert builder.main(["--out", str(out)]) == 0
    assert builder.main(["--check", "--out", str(out)]) == 0
    out.write_text("[]\n")
    assert builder.main(["--check", "--out", str(out)]) == 1


def test_batches_from_the_embedded_data_fit_max_length(gpt2):
    dm = PreferenceDataModule(limit=40, batch_size=4, max_length=96, max_prompt_length=64)
    dm.connect(gpt2, "alpaca")
    dm.setup()
    for batch in dm.train_dataloader():
        assert batch["input_ids"].shape[0] == 2 * len(batch["index"])
        assert batch["input_ids"].shape[1] <= 95
        assert ((batch["targets"] != -100).sum(1) > 0).all()
    assert isinstance(batch["input_ids"], torch.Tensor)
