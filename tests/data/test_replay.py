"""Replay mixing: exact per-batch ratio, seeded streams, compute-equivalent budget, datamodule."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from tests.data.test_text import byte_tokenizer
from tunelab.data.records import DataError
from tunelab.data.replay import (
    NEW,
    OLD,
    ReplayBatches,
    ReplayDataModule,
    check_ratio,
    cumulative_old,
    old_per_batch,
)

# Pools whose values say where a row came from: new rows hold 0..999, old rows 1000 + i.
NEW_POOL = torch.arange(40 * 5).reshape(40, 5)
OLD_POOL = 1000 + torch.arange(30 * 5).reshape(30, 5)


def mix(ratio: float, batch_size: int = 4, num_batches: int = 50, seed: int = 7) -> ReplayBatches:
    return ReplayBatches(NEW_POOL, OLD_POOL, ratio, batch_size, num_batches, seed)


def test_quarter_replay_is_exactly_one_old_block_in_four_per_batch():
    ds = mix(0.25, batch_size=4, num_batches=50)
    assert old_per_batch(0.25, 4, 50) == [1] * 50
    for k in range(len(ds)):
        b = ds[k]
        assert b["input_ids"].shape == (4, 4) and b["targets"].shape == (4, 4)
        assert int((b["domain"] == OLD).sum()) == 1
        # Rows come from the pool their domain flag names; targets are inputs shifted by one.
        full = torch.cat([b["input_ids"], b["targets"][:, -1:]], dim=1)
        assert torch.equal(b["targets"], full[:, 1:])
        assert ((full >= 1000) == (b["domain"] == OLD)[:, None]).all()
    assert ds.realised_ratio == 0.25


def test_error_diffusion_by_hand():
    # r*B = 0.8: cumulative old after k batches = floor(0.8k + 1/2) = 0, 1, 2, 2, 3, 4.
    assert old_per_batch(0.1, 8, 5) == [1, 1, 0, 1, 1]
    # r*B = 0.04: old blocks land in batches 12 and 37 (cumulative 0.52 -> 1, 1.52 -> 2).
    counts = old_per_batch(0.01, 4, 50)
    assert [k for k, c in enumerate(counts) if c] == [12, 37] and sum(counts) == 2
    assert old_per_batch(0.05, 4, 50).count(1) == 10  # 10 of 200 blocks = 0.05 exactly
    assert old_per_batch(0.0, 4, 10) == [0] * 10
    assert old_per_batch(1.0, 4, 10) == [4] * 10


@pytest.mark.parametrize("ratio", [0.0, 0.01, 0.05, 0.1, 0.25, 1 / 3, 0.5, 0.9, 1.0])
def test_cumulative_old_count_is_round_r_b_k_after_every_batch(ratio):
    ds = mix(ratio, batch_size=6, num_batches=40)
    seen_old = 0
    for k in range(len(ds)):
        seen_old += int((ds[k]["domain"] == OLD).sum())
        assert seen_old == cumulative_old(ratio, 6, k + 1)
        assert abs(seen_old - ratio * 6 * (k + 1)) <= 0.5 + 1e-9  # never more than half a block off


def test_ratio_outside_unit_interval_is_a_config_error():
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"data.replay_ratio must be in \[0, 1\]"):
            check_ratio(bad)
    with pytest.raises(ValueError, match="must be a number"):
        check_ratio("lots")
    with pytest.raises(ValueError, match=r"data.replay_ratio must be in \[0, 1\], got 2"):
        ReplayDataModule(new="embedded:new_python", old="embedded:old_prose", replay_ratio=2)
    with pytest.raises(ValueError, match="needs old-domain corpora in data.old"):
        ReplayDataModule(new="embedded:new_python", replay_ratio=0.1)
    with pytest.raises(DataError, match="needs at least one old-domain corpus"):
        ReplayBatches(NEW_POOL, None, 0.5, 4, 2, 0)


def test_streams_are_seeded_order_free_and_without_replacement_within_a_pass():
    a, b, c = mix(0.5, seed=1), mix(0.5, seed=1), mix(0.5, seed=2)
    # Batch k depends only on (seed, k): read backwards it is the same batch.
    backwards = {k: b[k] for k in reversed(range(len(b)))}
    for k in range(len(a)):
        assert torch.equal(a[k]["input_ids"], backwards[k]["input_ids"])
    assert any(not torch.equal(a[k]["input_ids"], c[k]["input_ids"]) for k in range(len(a)))
    # 100 old blocks from a pool of 30: passes 1-3 hold each block once, the 4th pass 10 of them.
    old_rows = [
        int(row[0]) for k in range(len(a)) for row in a[k]["input_ids"][a[k]["domain"] == OLD]
    ]
    assert len(old_rows) == 100
    for p in range(3):
        assert len(set(old_rows[30 * p : 30 * (p + 1)])) == 30
    counts = Counter(old_rows)
    assert sorted(set(counts.values())) == [3, 4]
    # Positions inside a batch are shuffled: the old block is not always in the same row.
    rows_with_old = {int(torch.nonzero(mix(0.25)[k]["domain"] == OLD)[0]) for k in range(50)}
    assert rows_with_old == {0, 1, 2, 3}


def _write_corpus(path, n_docs: int, word: str) -> None:
    path.write_text("".join(json.dumps({"text": f"{word} {i} " * 5}) + "\n" for i in range(n_docs)))


@pytest.fixture
def corpora(tmp_path):
    new, old = tmp_path / "new.jsonl", tmp_path / "old.jsonl"
    _write_corpus(new, 40, "def")
    _write_corpus(old, 40, "prose")
    return new, old


def test_datamodule_is_compute_equivalent_and_holds_out_validation_per_domain(corpora):
    new, old = corpora
    totals = {}
    for r in (0.0, 0.25, 1.0):
        dm = ReplayDataModule(
            new=str(new), old=[str(old)], replay_ratio=r, block_len=16, batch_size=4,
            train_batches=10, val_blocks=3, seed=5,
        )  # fmt: skip
        dm.connect(byte_tokenizer(), None, max_length=64)
        dm.setup("fit")
        batches = list(dm.train_dataloader())
        assert len(batches) == 10
        totals[r] = sum(int(b["targets"].numel()) for b in batches)
        n_old = sum(int((b["domain"] == OLD).sum()) for b in batches)
        assert n_old == round(r * 40)
        new_val, old_val = dm.val_dataloader()
        vb = next(iter(new_val))
        assert vb["input_ids"].shape == (3, 16) and (vb["domain"] == NEW).all()
        assert (next(iter(old_val))["domain"] == OLD).all()
        # Held-out blocks never appear in training.
        held = {tuple(x) for x in dm.val_sets[0].blocks.tolist() + dm.val_sets[1].blocks.tolist()}
        train_rows = {
            tuple(torch.cat([b["input_ids"], b["targets"][:, -1:]], 1)[i].tolist())
            for b in batches
            for i in range(4)
        }
        assert not held & train_rows
    assert totals == {0.0: 640, 0.25: 640, 1.0: 640}  # 10 x 4 x 16 whatever r is


def test_datamodule_budget_options_and_errors(corpora):
    new, old = corpora
    tok = byte_tokenizer()
    dm = ReplayDataModule(new=str(new), block_len=16, batch_size=4, train_tokens=200, val_blocks=2)
    dm.connect(tok)
    dm.setup()
    assert len(dm.train_dataloader()) == 4  # ceil(200 / 64)
    assert len(dm.val_dataloader()) == 1  # no old corpus: new only
    dm = ReplayDataModule(new=str(new), block_len=16, batch_size=4, val_blocks=2)
    dm.connect(tok)
    dm.setup()
    n_train = len(dm.train_set.new_blocks)
    assert len(dm.train_dataloader()) == -(-n_train // 4)  # default: one pass over new
    with pytest.raises(ValueError, match="data.block_len=300 exceeds the model's context length"):
        ReplayDataModule(new=str(new), block_len=300).connect(tok, None, max_length=256)
    with pytest.raises(ValueError, match="train_batches or train_tokens, not both"):
        ReplayDataModule(new=str(new), train_batches=2, train_tokens=10)
    missing = ReplayDataModule(new=str(new.parent / "nope.jsonl"))
    missing.connect(tok)
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl: corpus path not found"):
        missing.setup()
