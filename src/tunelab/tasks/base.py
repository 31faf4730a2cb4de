"""Shared LightningModule plumbing: optimizer, checkpoint metadata, token counting."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch

from tunelab.models.decoder import Decoder
from tunelab.models.loaders.checkpoint import checkpoint_metadata
from tunelab.models.tokenizer import Tokenizer


class LMTask(L.LightningModule):
    """Base for SFT, CPT and DPO. Subclasses implement `step(batch, split) -> loss`."""

    def __init__(
        self,
        model: Decoder,
        tokenizer: Tokenizer,
        prompt_style: str,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        weight_decay_exclude_norms: bool = True,
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.prompt_style = prompt_style
        self.optimizer_factory = optimizer
        self.weight_decay_exclude_norms = weight_decay_exclude_norms
        self.tokens_seen = 0

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.model(input_ids, **kwargs)

    def step(self, batch: dict[str, torch.Tensor], split: str) -> torch.Tensor:
        raise NotImplementedError

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.step(batch, "val")

    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise ValueError("task has no optimizer: set `optimizer` in the config")
        decay, no_decay = [], []
        for p in self.model.parameters():
            if not p.requires_grad:
                continue
            (no_decay if self.weight_decay_exclude_norms and p.dim() < 2 else decay).append(p)
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        return self.optimizer_factory(params=[g for g in groups if g["params"]])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tunelab"] = checkpoint_metadata(self.model, self.tokenizer, self.prompt_style)
        checkpoint["tunelab"]["tokens_seen"] = self.tokens_seen

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.tokens_seen = int(checkpoint.get("tunelab", {}).get("tokens_seen", 0))
