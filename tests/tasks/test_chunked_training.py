"""`task.chunked_lm_loss`: training through `tunelab.train` follows the same trajectory either way."""

from __future__ import annotations

import hydra
import pytest

from tests.conftest import compose_train, quick_sft_overrides
from tunelab.models.tokenizer import gpt2_tokenizer
from tunelab.train import train


def test_three_sft_steps_give_the_same_losses_with_and_without_chunking(tmp_path, toy_file):
    losses = {}
    for chunked in (False, True):
        cfg = compose_train(
            quick_sft_overrides(
                toy_file,
                "data.batch_size=4",
                "data.packing=true",
                f"task.chunked_lm_loss={str(chunked).lower()}",
                "trainer.max_steps=3",
                "optimized_metric=train/loss_epoch",
            ),
            tmp_path / str(chunked),
        )
        losses[chunked] = train(cfg)
    # the epoch mean includes steps 2 and 3, taken after updates: equal losses mean equal gradients
    assert losses[True] == pytest.approx(losses[False], abs=1e-5)


def test_tokens_seen_counts_every_target_of_an_epoch(tmp_path, toy_file):
    # the count is taken on the host before the batch moves (no device sync); it must be exact
    cfg = compose_train(
        quick_sft_overrides(
            toy_file,
            "data.batch_size=3",
            "trainer.max_epochs=1",
            "optimized_metric=train/tokens_seen",
        ),
        tmp_path,
    )
    seen = train(cfg)
    dm = hydra.utils.instantiate(cfg.data)
    dm.connect(gpt2_tokenizer(), "alpaca")
    dm.setup("fit")
    expected = sum(int((b["targets"] != -100).sum()) for b in dm.train_dataloader())
    assert expected > 0 and seen == expected
