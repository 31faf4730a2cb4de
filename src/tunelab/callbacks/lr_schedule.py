"""Linear warmup then half-cosine decay to a minimum LR (the seed's appendix-D schedule).

`restart_step` re-warms: steps before it are ignored, so continued pretraining from a pretrained
checkpoint warms up and decays again. `schedule: constant` holds peak_lr (for ablations).

A warmup given as a fraction becomes `round(fraction x steps)` (`warmup_rounding: nearest`, the
step count nearest to what was asked) or `int(fraction x steps)` (`floor`, the book's appendix D:
103 steps at 0.2 give 21 and 20 warmup steps). `initial_lr: 0` (as transformers'
`get_cosine_schedule_with_warmup`) makes the first step a no-op on the weights that still warms
Adam's moments; the book's `train_model` starts at `initial_lr=3e-5`.
"""

from __future__ import annotations

import logging
import math

import lightning as L

from tunelab.utils.scalars import log_step_value

log = logging.getLogger(__name__)


def lr_at(
    step: int,
    total_steps: int,
    peak_lr: float,
    warmup_steps: int = 0,
    initial_lr: float = 0.0,
    min_lr: float = 0.0,
    schedule: str = "cosine",
    restart_step: int = 0,
) -> float:
    """LR at optimizer step `step` (0-based)."""
    if schedule == "constant":
        return peak_lr
    if schedule != "cosine":
        raise ValueError(f"unknown LR schedule {schedule!r}; expected 'cosine' or 'constant'")
    step = max(0, step - restart_step)
    total = max(1, total_steps - restart_step)
    if step < warmup_steps:
        return initial_lr + step * (peak_lr - initial_lr) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
    return min_lr + (peak_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


class WarmupCosineLR(L.Callback):
    """Sets every param group's LR before each optimizer step and logs it as `train/lr`.

    warmup: steps (int >= 1) or a fraction of total steps (float < 1).
    peak_lr: None takes the optimizer's configured lr.
    total_steps: None takes the trainer's estimate (max_steps or epochs x batches).
    """

    def __init__(
        self,
        warmup: float = 0.1,
        peak_lr: float | None = None,
        initial_lr: float = 0.0,
        min_lr: float = 0.0,
        total_steps: int | None = None,
        schedule: str = "cosine",
        restart_step: int = 0,
        warmup_rounding: str = "nearest",
    ) -> None:
        if warmup_rounding not in ("nearest", "floor"):
            raise ValueError(
                "callbacks.lr_schedule.warmup_rounding: expected 'nearest' or 'floor', "
                f"got {warmup_rounding!r}"
            )
        self.warmup_rounding = warmup_rounding
        if schedule not in ("cosine", "constant"):
            raise ValueError(
                f"callbacks.lr_schedule.schedule: expected 'cosine' or 'constant', got {schedule!r}"
            )
        if warmup < 0:
            raise ValueError(f"callbacks.lr_schedule.warmup must be >= 0, got {warmup}")
        self.warmup, self.peak_lr, self.initial_lr, self.min_lr = (
            warmup,
            peak_lr,
            initial_lr,
            min_lr,
        )
        self.total_steps, self.schedule, self.restart_step = total_steps, schedule, restart_step
        self._resolved: tuple[int, int, float] | None = None

    def resolve(self, trainer: L.Trainer) -> tuple[int, int, float]:
        if self._resolved is None:
            total = self.total_steps or int(trainer.estimated_stepping_batches)
            span = max(1, total - self.restart_step)
            warmup = int(self.warmup) if self.warmup >= 1 else self.fraction_steps(span)
            peak = (
                self.peak_lr if self.peak_lr is not None else trainer.optimizers[0].defaults["lr"]
            )
            if warmup >= span and self.schedule == "cosine":
                log.warning(
                    "callbacks.lr_schedule.warmup=%s is %d steps, not shorter than the run's %d: "
                    "the LR never reaches peak_lr=%g (lower the warmup or train longer)",
                    self.warmup,
                    warmup,
                    span,
                    peak,
                )
            self._resolved = (total, warmup, peak)
        return self._resolved

    def fraction_steps(self, span: int) -> int:
        """Warmup steps for a fractional `warmup` over `span` steps."""
        steps = self.warmup * span
        return int(steps) if self.warmup_rounding == "floor" else int(round(steps))

    def lr_for(self, trainer: L.Trainer, step: int) -> float:
        total, warmup, peak = self.resolve(trainer)
        return lr_at(
            step,
            total,
            peak,
            warmup,
            self.initial_lr,
            self.min_lr,
            self.schedule,
            self.restart_step,
        )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        lr = self.lr_for(trainer, trainer.global_step)
        for opt in trainer.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr
        log_step_value(pl_module, "train/lr", lr)
