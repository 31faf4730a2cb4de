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
