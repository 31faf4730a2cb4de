"""Surviving interruptions and numerical faults.

- `AtomicCheckpointIO`: checkpoints are written to a temporary file in the same folder, flushed
  to disk, then renamed over the target, so a kill during a save never leaves a half-written
  `last.ckpt` that a resume would trust; a full disk is one line naming the path, and the last
  good checkpoint stays. Checkpoints are read back with `weights_only=True`.
- `SaveOnSigterm`: Lightning turns SIGTERM into an exception at the next step boundary; this
  callback saves `last.ckpt` there (weights, optimizer, data position), so `ckpt_path=last`
  continues exactly where the run stopped.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from tunelab.utils.io import atomic_save

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        # A full disk or a read-only folder: one line naming the path (tunelab.utils.io).
        atomic_save(path, lambda f: torch.save(checkpoint, f))

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = None):
        # Resumed checkpoints never run code: tensors and plain containers only.
        kwargs = {} if map_location is None else {"map_location": map_location}
        return super().load_checkpoint(path, weights_only=True, **kwargs)


class SaveOnSigterm(L.Callback):
    """On SIGTERM (preemption, `kill`, Ctrl-C of a scheduler) save a resumable last.ckpt."""

    def __init__(self, dirpath: str, filename: str = "last.ckpt") -> None:
        self.path = Path(dirpath) / filename

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException | KeyboardInterrupt):
            trainer.save_checkpoint(self.path)
            log.warning(
                "interrupted at step %d: saved %s (resume with ckpt_path=last)",
                trainer.global_step,
                self.path,
            )


class PeriodicCheckpoint(L.Callback):
    """Save `last.ckpt` every N optimizer steps, so a SIGKILL loses at most N steps."""

    def __init__(self, dirpath: str, every_n_steps: int = 50, filename: str = "last.ckpt") -> None:
        if every_n_steps < 1:
            raise ValueError(
                f"callbacks.periodic_checkpoint.every_n_steps must be >= 1, got {every_n_steps}"
            )
        self.path = Path(dirpath) / filename
        self.every_n_steps = every_n_steps

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0 and not trainer.sanity_checking:
            trainer.save_checkpoint(self.path)


class ValidateAtEnd(L.Callback):
    """Validate on the last training step when Lightning would not (max_steps mid-epoch, a final
    epoch that `check_val_every_n_epoch` skips), so every finished run has final val metrics and
    `best.ckpt`. It asks Lightning to stop there (`trainer.should_stop`, its early-stopping path),
    which runs the ordinary validation loop and ModelCheckpoint; no step is validated twice."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.sanity_checking or not trainer.enable_validation:
            return
        loop = trainer.fit_loop
        max_steps, max_epochs = trainer.max_steps, loop.max_epochs
        last_step = max_steps is not None and max_steps > 0 and trainer.global_step >= max_steps
        last_epoch = (
            max_epochs is not None
            and max_epochs > 0
            and trainer.current_epoch >= max_epochs - 1
            and loop.epoch_loop.batch_progress.is_last_batch
        )
        if last_step or last_epoch:
            trainer.should_stop = True
            trainer.check_val_every_n_epoch = 1  # this final step is validated in any epoch
