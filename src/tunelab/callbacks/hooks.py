"""Forward hooks on a decoder's residual stream, registered and removed in one place.

Both inspection callbacks and `python -m tunelab.lens` read the residual stream through these
helpers, so every hook they add has a handle kept here and is removed (in a `finally`, or from the
callbacks' `on_fit_end`/`on_exception`/`teardown`). `hook_count(model)` is what the tests use to
prove nothing is left behind.

Residual indexing used everywhere: 0 = the embedding output (the input to block 0), i >= 1 = the
output of block i - 1. So a model with n blocks has n + 1 residuals and the last one is what the
final norm and the LM head turn into the model's logits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from tunelab.models.decoder import Decoder

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
)


def hook_count(model: nn.Module) -> int:
    """Number of module hooks (forward, forward-pre, backward, backward-pre) under `model`."""
    return sum(len(getattr(m, d, {})) for m in model.modules() for d in _HOOK_DICTS)


def find_decoder(module: nn.Module) -> Decoder:
    """The `Decoder` inside a LightningModule (`task.model`) or the module itself."""
    if isinstance(module, Decoder):
        return module
    inner = getattr(module, "model", None)
    if isinstance(inner, Decoder):
        return inner
    for m in module.modules():
        if isinstance(m, Decoder):
            return m
    raise TypeError(
        f"{type(module).__name__} holds no tunelab Decoder (expected `.model` to be one); "
        "activation and logit-lens hooks need its `blocks`, `norm_f` and `lm_head`"
    )


def _first_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, tuple | list) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    raise TypeError(f"expected a tensor (or a tuple starting with one), got {type(value).__name__}")


ResidualFn = Callable[[int, torch.Tensor], None]


class ResidualHooks:
    """Calls `fn(index, residual)` on every forward pass, for residuals 0..n_layer.

    Residual 0 comes from a forward-pre hook on block 0 (its input = the embedding output, after
    dropout), residual i from a forward hook on block i - 1. Keep the object and call `remove()`.
    """

    def __init__(self, model: Decoder, fn: ResidualFn, include_embedding: bool = True) -> None:
        self.handles: list[RemovableHandle] = []
        blocks = model.blocks
        if include_embedding and len(blocks):
            self.handles.append(
                blocks[0].register_forward_pre_hook(lambda _m, args: fn(0, _first_tensor(args)))
            )
        for i, block in enumerate(blocks):
            self.handles.append(
                block.register_forward_hook(
                    lambda _m, _args, out, i=i: fn(i + 1, _first_tensor(out))
                )
            )

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def __len__(self) -> int:
        return len(self.handles)


@contextlib.contextmanager
def capture_block_outputs(
    model: nn.Module, include_embedding: bool = True, detach: bool = True
) -> Iterator[dict[int, torch.Tensor]]:
    """`with capture_block_outputs(model) as res: model(ids)` fills `res[i]` (see module doc).

    Each forward pass overwrites the entries. Hooks are removed on exit, also on an exception.
    """
    decoder = find_decoder(model)
    captured: dict[int, torch.Tensor] = {}

    def keep(i: int, x: torch.Tensor) -> None:
        captured[i] = x.detach() if detach else x

    hooks = ResidualHooks(decoder, keep, include_embedding)
    try:
        yield captured
    finally:
        hooks.remove()
