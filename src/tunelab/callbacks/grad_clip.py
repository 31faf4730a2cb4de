"""Gradient clipping at a global max norm, logging the norm measured before clipping."""

from __future__ import annotations

import lightning as L
import torch

from tunelab.utils.scalars import log_step_value


class GradClip(L.Callback):
    def __init__(self, max_norm: float = 1.0, norm_type: float = 2.0) -> None:
        if max_norm <= 0:
            raise ValueError(f"callbacks.grad_clip.max_norm must be > 0, got {max_norm}")
        self.max_norm, self.norm_type = max_norm, norm_type
        self.last_norm: float | None = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return
        norm = torch.nn.utils.clip_grad_norm_(params, self.max_norm, norm_type=self.norm_type)
        self.last_norm = float(norm)
        if not torch.isfinite(norm):
            handler = getattr(pl_module, "nonfinite", None)
            if handler is None:
                raise FloatingPointError(f"non-finite gradient norm at step {trainer.global_step}")
            handler(f"gradient norm {self.last_norm}", -1)
            for (
                p
            ) in params:  # skip policy: no gradient, so the optimizer leaves weights as they are
                p.grad = None
            return
        log_step_value(pl_module, "train/grad_norm", self.last_norm)
