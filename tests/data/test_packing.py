"""Packing: exact row layout by hand, and packed loss == padded loss on both families."""

from __future__ import annotations

import pytest
import torch

from tunelab.data.packing import assign_rows, collate_packed
from tunelab.data.records import Record
from tunelab.data.sft import Example, SFTDataModule, collate_sft
from tunelab.losses import masked_cross_entropy
from tunelab.models.config import Config
from tunelab.models.decoder import Decoder
from tunelab.models.tokenizer import gpt2_tokenizer

PAD = 50256


def test_two_examples_share_one_row_with_restarting_positions():
    batch = collate_packed([[5, 6, 7], [8, 9]], pad_id=PAD, max_length=8)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    # each example's own targets, ending in its end-of-text token; none crosses the boundary
    assert batch["targets"].tolist() == [[6, 7, PAD, 9, PAD]]
    assert batch["positions"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["doc_ids"].tolist() == [[0, 0, 0, 1, 1]]


def test_rows_are_padded_to_the_longest_row_and_padding_is_ignored():
    # lengths 4, 3, 2 with max_length 5: total 9 -> 2 rows; longest first into the shortest row
    batch = collate_packed([[1, 2, 3, 4], [5, 6, 7], [8, 9]], pad_id=PAD, max_length=5)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, PAD], [5, 6, 7, 8, 9]]
    assert batch["targets"].tolist() == [[2, 3, 4, PAD, -100], [6, 7, PAD, 9, PAD]]
    batch = collate_packed([[1, 2, 3, 4], [5], [8, 9]], pad_id=PAD, max_length=5)
    # lengths 4, 1, 2: total 7 -> 2 rows; 4 -> row 0, 2 -> row 1, 1 -> the shorter row 1
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4], [5, 8, 9, PAD]]
    assert batch["targets"].tolist() == [[2, 3, 4, PAD], [PAD, 9, PAD, -100]]
    assert batch["positions"].tolist() == [[0, 1, 2, 3], [0, 0, 1, 0]]
    assert batch["doc_ids"].tolist() == [[0, 0, 0, 0], [1, 2, 2, -1]]


def test_rows_can_be_padded_to_a_multiple():
    batch = collate_packed([[5, 6, 7], [8, 9]], pad_id=PAD, max_length=8, pad_to_multiple_of=4)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, PAD, PAD, PAD]]
    assert batch["targets"].tolist() == [[6, 7, PAD, 9, PAD, -100, -100, -100]]
    assert batch["doc_ids"].tolist() == [[0, 0, 0, 1, 1, -1, -1, -1]]


def test_assign_rows_balances_and_respects_max_length():
    assert assign_rows([4, 3, 2], 5) == [[0], [1, 2]]
    assert assign_rows([3, 3, 3, 3], 6) == [[0, 2], [1, 3]]
    # 5+4+3 = 12 fits 2 rows of 6 by count, but no split of {5,4,3} does: the greedy adds a row
    assert assign_rows([5, 4, 3], 6) == [[0], [1], [2]]
    assert assign_rows([], 4) == []
    with pytest.raises(ValueError, match="example 1 has 7 tokens, more than max_length=6"):
        assign_rows([2, 7], 6)


def test_prompt_masking_applies_per_example():
    exs = [
        Example([10, 11, 12, 20], prompt_len=3, record=Record("a")),
        Example([13, 14, 21, 22], prompt_len=2, record=Record("b")),
    ]
    batch = collate_packed(exs, pad_id=PAD, max_length=16, mask_prompt=True)
    assert batch["targets"].tolist() == [[-100, -100, 20, PAD, -100, 21, 22, PAD]]


def _examples(n: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 20, (n,), generator=g).tolist()
    return [torch.randint(0, 5000, (k,), generator=g).tolist() for k in lengths]


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-llama"])
def test_packed_loss_and_gradients_equal_the_padded_ones(preset):
    torch.manual_seed(0)
    model = Decoder(Config.from_preset(preset)).eval()
    seqs = _examples(7)
    padded = collate_sft(seqs, pad_id=PAD)
    packed = collate_packed(seqs, pad_id=PAD, max_length=32)
    assert packed["input_ids"].numel() < padded["input_ids"].numel()

    loss_a, n_a = masked_cross_entropy(model(padded["input_ids"]), padded["targets"])
    grads_a = torch.autograd.grad(loss_a, list(model.parameters()))
    logits = model(packed["input_ids"], positions=packed["positions"], doc_ids=packed["doc_ids"])
    loss_b, n_b = masked_cross_entropy(logits, packed["targets"])
    grads_b = torch.autograd.grad(loss_b, list(model.parameters()))

    assert int(n_a) == int(n_b) == sum(len(s) for s in seqs)
    assert abs(float(loss_a) - float(loss_b)) < 1e-5
    for ga, gb in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(ga, gb, atol=1e-5, rtol=1e-4)


def test_datamodule_packs_the_same_examples_per_batch():
    tok = gpt2_tokenizer()
    batches = {}
    for packing in (False, True):
        dm = SFTDataModule(limit=40, batch_size=8, max_length=256, packing=packing)
        dm.connect(tok, "alpaca")
        dm.setup()
        batches[packing] = list(dm.train_dataloader())
    assert len(batches[True]) == len(batches[False])
    for plain, packed in zip(batches[False], batches[True], strict=True):
        keys = {"input_ids", "targets", "positions", "doc_ids", "cu_seqlens", "max_seqlen"}
        assert set(packed) == keys  # varlen spans computed on the host
        assert packed["input_ids"].shape[1] <= 256
        # same counted targets, far fewer slots
        assert sorted(packed["targets"][packed["targets"] != -100].tolist()) == sorted(
            plain["targets"][plain["targets"] != -100].tolist()
        )
        assert packed["input_ids"].numel() <= plain["input_ids"].numel()


def test_training_entry_point_gives_the_same_first_loss_packed_or_not(tmp_path, toy_file):
    from tests.conftest import compose_train, quick_sft_overrides
    from tunelab.train import train

    losses = {}
    for packing in (False, True):
        cfg = compose_train(
            quick_sft_overrides(
                toy_file,
                "data.batch_size=8",
                f"data.packing={str(packing).lower()}",
                "trainer.max_steps=1",
                "optimized_metric=train/loss_epoch",
            ),
            tmp_path / str(packing),
        )
        losses[packing] = train(cfg)
    # one step on the same eight records: the loss before the update is the same function
    assert losses[True] == pytest.approx(losses[False], abs=1e-5)


def test_a_cut_example_in_a_packed_row_targets_the_token_after_the_cut():
    cut = Example([10, 11, 20, 21], prompt_len=2, record=Record("a"), next_id=22)
    whole = Example([13, 23], prompt_len=1, record=Record("b"))
    batch = collate_packed([cut, whole], pad_id=PAD, max_length=8, mask_prompt=True)
    assert batch["input_ids"].tolist() == [[10, 11, 20, 21, 13, 23]]
    assert batch["targets"].tolist() == [[-100, 20, 21, 22, 23, PAD]]
    padded = collate_sft([cut, whole], pad_id=PAD, mask_prompt=True)
    assert sorted(t for t in padded["targets"].flatten().tolist() if t != -100) == sorted(
        t for t in batch["targets"].flatten().tolist() if t != -100
    )
