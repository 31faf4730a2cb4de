"""Surviving interruptions and numerical faults.

- `AtomicCheckpointIO`: checkpoints are written to a temporary file in the same folder, flushed
  to disk, then renamed over the target, so a kill during a save never leaves a half-written
  `last.ckpt` that a resume would trust.
- `SaveOnSigterm`: Lightning turns SIGTERM into an exception at the next step boundary; this
  callback saves `last.ckpt` there (weights, optimizer, data position), so `ckpt_path=last`
  continues exactly where the run stopped.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


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
