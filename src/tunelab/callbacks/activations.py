"""Per-layer residual-stream statistics and gradient norms, logged every N optimizer steps.

Metrics (residual index i: 0 = embeddings, i >= 1 = output of block i, zero-padded for sorting):

- `act/layer_{i}/rms`, `mean`, `std`, `max_abs`: of the residual stream on the first micro-batch
  of a logging step (all positions, padding included), measured in fp32.
- `act/layer_{i}/grad_norm`: L2 norm of d(loss)/d(residual i) over that micro-batch.
- `act/layer_{i}/param_grad_norm` (i >= 1): L2 norm of block i's parameter gradients after that
  micro-batch's backward, before clipping (under fp16 AMP they still carry the loss scale).

How: forward hooks on every block (and a forward-pre hook on block 0 for the embeddings) stay
registered from `on_fit_start` until `on_fit_end`, `on_exception` or `teardown`, whichever comes
first. On non-logging steps they return at once. On a logging step the forward hook also attaches
a gradient hook to the block's output tensor (`Tensor.register_hook`): that tensor hook lives and
dies with the autograd graph, so nothing can outlive the step. We chose it over
`register_full_backward_hook`, which wraps every forward call of the block (validation and
generation included) in extra autograd nodes whether or not anything is logged. All per-layer
numbers stay on the device until one `tolist()` at the end of the logging step.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch

from tunelab.callbacks.hooks import ResidualHooks, find_decoder

log = logging.getLogger(__name__)

STAT_NAMES = ("rms", "mean", "std", "max_abs")


def residual_stats(x: torch.Tensor) -> torch.Tensor:
    """(rms, mean, std, max |x|) of a tensor, in fp32, as one 4-vector (no device sync)."""
    x = x.detach().float()
    return torch.stack([x.pow(2).mean().sqrt(), x.mean(), x.std(), x.abs().max()])


class ActivationStats(L.Callback):
    """Logs residual RMS/mean/std/max|x| and gradient norms per layer every `every_n_steps`."""

    def __init__(
        self,
        every_n_steps: int = 50,
        grad_norms: bool = True,
        param_grad_norms: bool = True,
        prefix: str = "act",
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(
                f"callbacks.activations.every_n_steps must be >= 1, got {every_n_steps}"
            )
        self.every_n_steps = every_n_steps
        self.grad_norms, self.param_grad_norms, self.prefix = grad_norms, param_grad_norms, prefix
        self.hooks: ResidualHooks | None = None
        self.history: list[dict[str, float]] = []  # one dict per logging step (with "step")
        self._active = False
        self._step = -1
        self._last_step = -1
        self._stats: dict[int, torch.Tensor] = {}
        self._grads: dict[int, torch.Tensor] = {}
        self._param_grads: dict[int, torch.Tensor] = {}
        self._width = 1

    # -- hook lifetime ------------------------------------------------------------------------
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.remove()
        decoder = find_decoder(pl_module)
        self._width = len(str(len(decoder.blocks)))
        self.hooks = ResidualHooks(decoder, self._on_residual)

    def remove(self) -> None:
        """Remove every hook this callback added (safe to call more than once)."""
        if self.hooks is not None:
            self.hooks.remove()
            self.hooks = None
        self._active = False

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.remove()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception) -> None:
        self.remove()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.remove()

    # -- measuring ----------------------------------------------------------------------------
    def _on_residual(self, i: int, x: torch.Tensor) -> None:
        if not self._active or not torch.is_grad_enabled():
            return  # not a logging step, or a no-grad pass (validation, generation)
        if i in self._stats:
            return  # the block recomputed in the backward pass (activation checkpointing)
        self._stats[i] = residual_stats(x)
        if self.grad_norms and x.requires_grad:

            def keep_grad(g: torch.Tensor, i: int = i) -> None:
                self._grads[i] = g.detach().float().norm()

            x.register_hook(keep_grad)

    def on_train_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        # Only the first micro-batch of a logging step (gradient accumulation repeats the step).
        self._active = (
            self.hooks is not None and step % self.every_n_steps == 0 and step != self._last_step
        )
        if self._active:
            self._step = step
            self._stats, self._grads, self._param_grads = {}, {}, {}

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not (self._active and self.param_grad_norms):
            return
        grads, owner = [], []
        for b, block in enumerate(find_decoder(pl_module).blocks):
            for p in block.parameters():
                if p.grad is not None:
                    grads.append(p.grad.detach())
                    owner.append(b + 1)
        if not grads:
            return
        # One fused norm kernel for every gradient (as clip_grad_norm_ does), then per block.
        foreach_norm = getattr(torch, "_foreach_norm", None)
        norms = foreach_norm(grads) if foreach_norm else [g.norm() for g in grads]
        sq = torch.stack([n.float() for n in norms]).pow(2)
        index = torch.tensor(owner, device=sq.device)
        per_block = torch.zeros(max(owner) + 1, device=sq.device).index_add_(0, index, sq).sqrt()
        for i in sorted(set(owner)):
            self._param_grads[i] = per_block[i]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch: Any, batch_idx: int) -> None:
        if not self._active:
            return
        self._active = False
        self._last_step = self._step
        metrics = self.collect()
        if not metrics:
            return
        self.history.append({"step": float(self._step), **metrics})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=self._step)

    def collect(self) -> dict[str, float]:
        """The numbers measured on the current logging step, as `{name: value}` (one sync)."""
        names: list[str] = []
        values: list[torch.Tensor] = []
        for i in sorted(self._stats):
            names += [self._name(i, s) for s in STAT_NAMES]
            values.append(self._stats[i])
        for source, stat in ((self._grads, "grad_norm"), (self._param_grads, "param_grad_norm")):
            for i in sorted(source):
                names.append(self._name(i, stat))
                values.append(source[i].reshape(1).to(values[0].device if values else "cpu"))
        if not values:
            return {}
        flat = torch.cat([v.reshape(-1).float() for v in values]).tolist()
        return dict(zip(names, flat, strict=True))

    def _name(self, i: int, stat: str) -> str:
        return f"{self.prefix}/layer_{i:0{self._width}d}/{stat}"
