"""`task.chunked_lm_loss`: training through `tunelab.train` follows the same trajectory either way."""

from __future__ import annotations

import pytest

from tests.conftest import compose_train
from tunelab.train import train


def test_three_sft_steps_give_the_same_losses_with_and_without_chunking(tmp_path, toy_file):
    losses = {}
    for chunked in (False, True):
        cfg = compose_train(
            [
                "model=tiny-gpt2",
                "trainer=cpu",
                "data=instructions_file",
                f"data.path={toy_file}",
                "data.split=[1.0,0.0,0.0]",
                "data.batch_size=4",
                "data.packing=true",
                f"task.chunked_lm_loss={str(chunked).lower()}",
                "trainer.max_steps=3",
                "+trainer.limit_val_batches=0",
                "+trainer.enable_progress_bar=false",
                "~callbacks.progress_bar",
                "~callbacks.responses",
                "~callbacks.model_checkpoint",
                "optimized_metric=train/loss_epoch",
            ],
            tmp_path / str(chunked),
        )
        losses[chunked] = train(cfg)
    # the epoch mean includes steps 2 and 3, taken after updates: equal losses mean equal gradients
    assert losses[True] == pytest.approx(losses[False], abs=1e-5)
