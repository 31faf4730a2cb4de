"""Gradient clipping at a global max norm, logging the norm measured before clipping.

`start_step`: the first optimizer step that is clipped. 0 (default) clips every step, warmup
included: the first steps of a fine-tune, with fresh Adam moments, are where a spike is most
likely. `warmup` clips from the end of the LR schedule's warmup on, as the book's appendix D
`train_model` does (`global_step >= warmup_steps`); the norm is logged on every step either way.
"""

from __future__ import annotations

import lightning as L
import torch

from tunelab.callbacks.lr_schedule import WarmupCosineLR
from tunelab.utils.scalars import log_step_value


class GradClip(L.Callback):
    def __init__(
        self, max_norm: float = 1.0, norm_type: float = 2.0, start_step: int | str = 0
    ) -> None:
        if max_norm <= 0:
            raise ValueError(f"callbacks.grad_clip.max_norm must be > 0, got {max_norm}")
        if start_step != "warmup" and not (isinstance(start_step, int) and start_step >= 0):
            raise ValueError(
                "callbacks.grad_clip.start_step: expected a step >= 0 or 'warmup', "
                f"got {start_step!r}"
            )
        self.max_norm, self.norm_type, self.start_step = max_norm, norm_type, start_step
        self.last_norm: float | None = None
        self._first_step: int | None = None if start_step == "warmup" else int(start_step)

    def first_clipped_step(self, trainer) -> int:
        """The first optimizer step that is clipped (`warmup`: the schedule's warmup end)."""
        if self._first_step is None:
            schedules = [c for c in trainer.callbacks if isinstance(c, WarmupCosineLR)]
            if not schedules:
                raise ValueError(
                    "callbacks.grad_clip.start_step=warmup needs the lr_schedule callback "
                    "(callbacks.lr_schedule), which defines the warmup"
                )
            _, warmup, _ = schedules[0].resolve(trainer)
            self._first_step = schedules[0].restart_step + warmup
        return self._first_step

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return
        clip = self._first_step == 0 or trainer.global_step >= self.first_clipped_step(trainer)
        if clip:
            norm = torch.nn.utils.clip_grad_norm_(params, self.max_norm, norm_type=self.norm_type)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params], self.norm_type)
        self.last_norm = float(norm)
        if not torch.isfinite(norm):
            handler = getattr(pl_module, "nonfinite", None)
            if handler is None:
                raise FloatingPointError(f"non-finite gradient norm at step {trainer.global_step}")
            handler(f"gradient norm {self.last_norm}", -1)
            # skip policy: no gradient, so the optimizer leaves weights as they are
            for p in params:
                p.grad = None
            return
        log_step_value(pl_module, "train/grad_norm", self.last_norm)
