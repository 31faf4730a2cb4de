"""Distributed strategies whose arguments are Python classes (not expressible in YAML)."""

from __future__ import annotations

from typing import Any


def fsdp(**kwargs: Any):
    """FSDP wrapping (and optionally checkpointing) each transformer `Block`."""
    from lightning.pytorch.strategies import FSDPStrategy

    from tunelab.models.decoder import Block

    checkpointing = kwargs.pop("activation_checkpointing", False)
    return FSDPStrategy(
        auto_wrap_policy={Block},
        activation_checkpointing_policy={Block} if checkpointing else None,
        **kwargs,
    )
