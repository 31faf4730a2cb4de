from tunelab.data.records import Record
from tunelab.data.sft import Example, collate_sft

PAD = 50256


def test_collate_matches_the_seed_on_its_three_sequences():
    batch = collate_sft([[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]], pad_id=PAD)
    assert batch["input_ids"].tolist() == [
        [0, 1, 2, 3, 4],
        [5, 6, PAD, PAD, PAD],
        [7, 8, 9, PAD, PAD],
    ]
    assert batch["targets"].tolist() == [
        [1, 2, 3, 4, PAD],
        [6, PAD, -100, -100, -100],
        [8, 9, PAD, -100, -100],
    ]


def test_collate_masks_prompt_tokens_when_asked():
    ex = Example(ids=[10, 11, 12, 20, 21], prompt_len=3, record=Record("x"))
    batch = collate_sft([ex], pad_id=PAD, mask_prompt=True)
    # targets[t] predicts token t+1: the first two targets are prompt tokens 11, 12.
    assert batch["targets"].tolist() == [[-100, -100, 20, 21, PAD]]


def test_collate_keeps_a_genuine_end_of_text_inside_a_sequence():
    batch = collate_sft([[1, PAD, 2], [3]], pad_id=PAD)
    assert batch["targets"].tolist() == [[PAD, 2, PAD], [PAD, -100, -100]]


# Truncation (issue 15): a cut example never learns to stop at the cut ---------------------------
def test_a_cut_example_targets_the_token_after_the_cut_not_end_of_text():
    from tunelab.data.sft import truncate_examples

    # prompt 10 11 12, answer 20 21 22 23; max_length 5 keeps 10 11 12 20 21, next is 22
    (ex,) = truncate_examples([Example([10, 11, 12, 20, 21, 22, 23], 3, Record("x"))], 5, "train")
    assert (ex.ids, ex.prompt_len, ex.next_id) == ([10, 11, 12, 20, 21], 3, 22)
    batch = collate_sft([ex, Example([30, 31], 1, Record("y"))], pad_id=PAD, mask_prompt=True)
    assert batch["input_ids"].tolist() == [[10, 11, 12, 20, 21], [30, 31, PAD, PAD, PAD]]
    # row 0: the book's collate keeps 22 (no PAD = end-of-text after the cut); row 1 is whole
    assert batch["targets"].tolist() == [[-100, -100, 20, 21, 22], [31, PAD, -100, -100, -100]]
    unmasked = collate_sft([ex], pad_id=PAD)
    assert unmasked["targets"].tolist() == [[11, 12, 20, 21, 22]]


def test_an_example_exactly_max_length_long_keeps_its_end_of_text():
    from tunelab.data.sft import truncate_examples

    (ex,) = truncate_examples([Example([10, 11, 20], 2, Record("x"))], 3, "train")
    assert ex.next_id is None
    assert collate_sft([ex], pad_id=PAD)["targets"].tolist() == [[11, 20, PAD]]


def test_prompts_longer_than_max_length_are_dropped_and_counted(caplog):
    from tunelab.data.sft import truncate_examples

    examples = [
        Example([10, 11, 12, 13, 20], 4, Record("long prompt")),  # prompt 4 > 3: no answer left
        Example([10, 11, 12, 20, 21], 3, Record("prompt fills")),  # last target = answer 20
        Example([14, 20], 1, Record("short")),
    ]
    with caplog.at_level("WARNING"):
        kept = truncate_examples(examples, 3, "train")
    assert [e.record.instruction for e in kept] == ["prompt fills", "short"]
    assert "train: truncated 1 of 3 examples to max_length=3 tokens" in caplog.text
    assert "train: dropped 1 of 3 examples whose prompt is longer than max_length=3" in caplog.text
    batch = collate_sft(kept, pad_id=PAD, mask_prompt=True)
    assert batch["targets"].tolist() == [[-100, -100, 20], [20, PAD, -100]]
