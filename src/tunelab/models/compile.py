"""Regional compilation: `torch.compile` of each decoder block, not of the whole model.

All blocks run the same code, so Dynamo traces it once and the blocks share the compiled graph
(their parameters are graph inputs): compile time is that of one block, not of n_layer. Packed
rows change the batch width every step; `dynamic=True` traces the width (and the row count) as
symbols from the first compile on, so new widths reuse the graph instead of recompiling until
Dynamo's recompile limit (after which it silently falls back to eager). `collate_packed`'s
`pad_to_multiple_of` additionally buckets the widths (fewer shapes for the kernels' autotuning).

`nn.Module.compile` compiles in place: parameter names, state dicts and checkpoints are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from tunelab.models.decoder import Decoder


def compile_blocks(
    model: Decoder, backend: str | Callable[..., Any] = "inductor", dynamic: bool = True
) -> Decoder:
    """Compile each of `model.blocks` in place (see the module docstring) and return `model`."""
    for block in model.blocks:
        block.compile(backend=backend, dynamic=dynamic)
    return model


def compiled_blocks(model: nn.Module) -> int:
    """How many of `model.blocks` are compiled (0 for an eager model)."""
    blocks = getattr(model, "blocks", [])
    return sum(getattr(b, "_compiled_call_impl", None) is not None for b in blocks)
