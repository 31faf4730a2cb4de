"""Values for `self.log` that never touch the GPU.

Lightning turns a logged Python number into a tensor on the module's device: on a GPU that is a
host-to-device copy from pageable memory, which waits for every kernel queued before it. Logged
every step (tokens seen, gradient norm, learning rate) that stalls the host in the middle of the
step, so it cannot queue the backward pass while the forward runs. A CPU tensor stays where it is.
"""

from __future__ import annotations

import lightning as L
import torch


def cpu_scalar(value: float | int) -> torch.Tensor:
    """A float64 CPU tensor (exact for integer counts up to 2**53, unlike float32)."""
    return torch.tensor(float(value), dtype=torch.float64)


def log_step_value(module: L.LightningModule, name: str, value: float | int) -> None:
    """Log a per-step number (not averaged over the epoch) without a device round trip."""
    module.log(name, cpu_scalar(value), on_step=True, on_epoch=False, batch_size=1)
