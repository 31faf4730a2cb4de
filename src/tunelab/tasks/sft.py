"""Supervised fine-tuning: masked next-token cross-entropy on (prompt, answer) sequences."""

from __future__ import annotations

import torch
from torchmetrics.text import Perplexity

from tunelab.losses import masked_cross_entropy
from tunelab.tasks.base import LMTask, _forward_kwargs, next_token_loss


class SFTTask(LMTask):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.val_perplexity = Perplexity(ignore_index=-100)

    def step(self, batch: dict[str, torch.Tensor], split: str) -> torch.Tensor:
        logits = None
        if split == "train":
            loss, n_targets = next_token_loss(self.model, batch, self.use_chunked_lm_loss)
        else:  # validation keeps the logits for the perplexity metric
            logits = self.model(batch["input_ids"], **_forward_kwargs(batch))
            loss, n_targets = masked_cross_entropy(logits, batch["targets"])
        loss, n_targets = self.global_token_mean(loss, n_targets)
        n_counted = self.counted_targets(batch, n_targets)
        bs = batch["input_ids"].shape[0]
        # Weight the epoch mean by counted tokens, so val/loss is the true per-token loss.
        self.log(
            f"{split}/loss",
            loss,
            prog_bar=True,
            batch_size=max(n_counted, 1),
            on_step=split == "train",
            on_epoch=True,
            sync_dist=True,  # with global_token_mean: the mean over ranks is the global mean
        )
        if split == "train":
            self.add_tokens_seen(n_counted, bs)
        else:
            self.val_perplexity.update(logits.float(), batch["targets"])
            self.log(
                "val/perplexity", self.val_perplexity, on_step=False, on_epoch=True, batch_size=bs
            )
        return loss
