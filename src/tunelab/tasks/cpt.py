"""Continued pretraining: next-token loss on every token, with live forgetting metrics.

Validation is split by domain (every batch carries `domain`: 0 new, 1 old) into token-weighted
`val/new_loss` and `val/old_loss`. The same validation pass runs once before the first update
(step 0), giving the baselines `val/old_loss@0`, `val/new_loss@0`, and then at every validation

    forgetting = val/old_loss - val/old_loss@0      (> 0: the old domain got worse)
    adaptation = val/new_loss@0 - val/new_loss      (> 0: the new domain got better)

All of them end up in `trainer.callback_metrics`, hence in metrics.json and usable as a sweep's
`optimized_metric`.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from tunelab.data.replay import DOMAIN_NAMES, NEW, OLD
from tunelab.losses.lm import IGNORE_INDEX
from tunelab.tasks.base import LMTask, batch_target_logprobs, next_token_loss
from tunelab.utils.scalars import cpu_scalar

log = logging.getLogger(__name__)


def forgetting_metrics(
    losses: dict[str, float], baseline: dict[str, float] | None
) -> dict[str, float]:
    """forgetting / adaptation from current and step-0 per-domain losses (pure)."""
    out: dict[str, float] = {}
    if not baseline:
        return out
    if "old" in losses and "old" in baseline:
        out["forgetting"] = losses["old"] - baseline["old"]
    if "new" in losses and "new" in baseline:
        out["adaptation"] = baseline["new"] - losses["new"]
    return out


class CPTTask(LMTask):
    """validate_at_start: run the validation pass before the first update (the step-0 baselines)."""

    def __init__(self, *args: Any, validate_at_start: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.validate_at_start = validate_at_start
        self.baseline: dict[str, float] | None = None
        self.blocks_seen = {NEW: 0, OLD: 0}
        self._host_old_blocks: int | None = None
        self._val_sums = torch.zeros(2, dtype=torch.float64)  # [domain] -> sum of token NLL
        self._val_counts = torch.zeros(2, dtype=torch.float64)  # [domain] -> target tokens

    # -- training ---------------------------------------------------------------------------
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # the replay blocks of the batch, counted on the host (see LMTask.on_before_batch_transfer)
        self._host_old_blocks = None
        if isinstance(batch, dict) and isinstance(batch.get("domain"), torch.Tensor):
            self._host_old_blocks = int((batch["domain"] == OLD).sum())
        return super().on_before_batch_transfer(batch, dataloader_idx)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, n_targets = next_token_loss(self.model, batch, self.use_chunked_lm_loss)
        # Every block has block_len targets, so per-rank means already average to the global one.
        bs = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=bs)
        self.add_tokens_seen(self.counted_targets(batch, n_targets), bs)
        if "domain" in batch:
            n_old = self._host_old_blocks
            if n_old is None:  # not through a Trainer's transfer hook: count on the device
                n_old = int((batch["domain"] == OLD).sum())
            self._host_old_blocks = None  # used once
            self.blocks_seen[OLD] += n_old
            self.blocks_seen[NEW] += bs - n_old
        total = self.blocks_seen[NEW] + self.blocks_seen[OLD]
        self.log(
            "train/replay_ratio_realised",
            cpu_scalar(self.blocks_seen[OLD] / max(1, total)),
            on_step=True,
            on_epoch=False,
            batch_size=bs,
        )
        return loss

    # -- validation -------------------------------------------------------------------------
    def _accumulate(self, batch: dict[str, torch.Tensor]) -> None:
        logp = batch_target_logprobs(self.model, batch, self.use_chunked_lm_loss)
        logps, counts = logp.sum(-1), (batch["targets"] != IGNORE_INDEX).sum(-1)
        domain = batch.get("domain")
        if domain is None:
            domain = torch.full_like(counts, NEW)
        for d in (NEW, OLD):
            m = domain == d
            self._val_sums[d] += float(-logps[m].sum())
            self._val_counts[d] += float(counts[m].sum())

    def _reduced_losses(self) -> dict[str, float]:
        sums, counts = self._val_sums.clone(), self._val_counts.clone()
        if self.trainer.world_size > 1:
            sums = self.trainer.strategy.reduce(sums.to(self.device), reduce_op="sum").cpu()
            counts = self.trainer.strategy.reduce(counts.to(self.device), reduce_op="sum").cpu()
        out = {DOMAIN_NAMES[d]: float(sums[d] / counts[d]) for d in (NEW, OLD) if counts[d] > 0}
        if counts.sum() > 0:
            out["all"] = float(sums.sum() / counts.sum())
        return out

    def on_validation_epoch_start(self) -> None:
        self._val_sums.zero_()
        self._val_counts.zero_()

    def validation_step(
        self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._accumulate(batch)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        losses = self._reduced_losses()
        self.log_dict(self._val_metrics(losses), on_step=False, on_epoch=True, batch_size=1)

    def _val_metrics(self, losses: dict[str, float]) -> dict[str, float]:
        metrics = {f"val/{d}_loss": v for d, v in losses.items() if d != "all"}
        if "all" in losses:
            metrics["val/loss"] = losses["all"]  # token-weighted over both domains
        metrics.update(forgetting_metrics(losses, self.baseline))
        if self.baseline:
            metrics.update({f"val/{d}_loss@0": v for d, v in self.baseline.items()})
        return metrics

    # -- step 0 -----------------------------------------------------------------------------
    def _val_limit(self, n_batches: int) -> int:
        limit = self.trainer.limit_val_batches
        if isinstance(limit, int):
            return min(limit, n_batches)
        return int(n_batches * float(limit))

    @torch.no_grad()
    def evaluate_now(self) -> dict[str, float]:
        """One validation pass outside the loop (the datamodule's val loaders, same limits)."""
        dm = self.trainer.datamodule
        if dm is None:
            raise RuntimeError("CPTTask needs a datamodule for the step-0 validation pass")
        was_training = self.training
        self.eval()
        self._val_sums.zero_()
        self._val_counts.zero_()
        try:
            for loader in dm.val_dataloader():
                limit = self._val_limit(len(loader))
                for i, batch in enumerate(loader):
                    if i >= limit:
                        break
                    self._accumulate(self.transfer_batch_to_device(batch, self.device, 0))
            return self._reduced_losses()
        finally:
            self.train(was_training)

    def on_train_start(self) -> None:
        # Loaded models come in eval mode and Lightning keeps module modes: train with dropout.
        self.train()
        if not self.validate_at_start or self.baseline is not None:
            return  # resumed runs keep the baseline saved in their checkpoint
        losses = self.evaluate_now()
        self.baseline = {d: v for d, v in losses.items() if d != "all"}
        metrics = self._val_metrics(losses)
        log.info("step 0: %s", ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))
        # Written to the loggers at step 0 now, and into callback_metrics for metrics.json.
        for logger in self.loggers:
            logger.log_metrics(metrics, step=self.global_step)
        for k, v in metrics.items():
            self.trainer.callback_metrics[k] = torch.tensor(v)

    # -- checkpoints ------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["tunelab"]["cpt_baseline"] = self.baseline
        checkpoint["tunelab"]["cpt_blocks_seen"] = dict(self.blocks_seen)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        meta = checkpoint.get("tunelab", {})
        self.baseline = meta.get("cpt_baseline")
        seen = meta.get("cpt_blocks_seen") or {}
        self.blocks_seen = {NEW: int(seen.get(NEW, 0)), OLD: int(seen.get(OLD, 0))}
