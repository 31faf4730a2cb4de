"""What a training step keeps for its backward: the gated MLP and the LoRA layer hold no extra
tokens x width tensors, with gradients equal to plain autograd's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tunelab.models.layers import _activation, gated_activation
from tunelab.models.lora import LoRALinear


def saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd saves while running fn()."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


@pytest.mark.parametrize("name", ["silu", "gelu", "gelu_tanh"])
def test_gated_activation_gradients_are_bitwise_autograds(name):
    torch.manual_seed(0)
    gate = torch.randn(4, 7, 33, dtype=torch.float64, requires_grad=True)
    up = torch.randn(4, 7, 33, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(4, 7, 33, dtype=torch.float64)
    plain = _activation(name)(gate) * up
    expected = torch.autograd.grad(plain, (gate, up), grad)
    out = gated_activation(gate, up, name)
    assert torch.equal(out, plain)
    got = torch.autograd.grad(out, (gate, up), grad)
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)


def test_gated_activation_keeps_two_tensors_not_three():
    gate = torch.randn(16, 64, requires_grad=True)
    up = torch.randn(16, 64, requires_grad=True)
    one = 16 * 64 * 4
    assert saved_bytes(lambda: F.silu(gate) * up) == 3 * one  # gate, silu(gate), up
    assert saved_bytes(lambda: gated_activation(gate, up, "silu")) == 2 * one
    with torch.no_grad():  # inference: no autograd Function at all
        assert torch.equal(gated_activation(gate, up, "silu"), F.silu(gate) * up)


def test_lora_layer_saves_only_its_input_and_the_rank_sized_product():
    """The adapters are added into the base output in place: beside x, only (tokens x rank)
    products and the adapter weights are saved, never a (tokens x out) tensor."""
    torch.manual_seed(0)
    lin = LoRALinear(torch.nn.Linear(64, 96), {"q": (0, 32), "v": (64, 96)}, 4, 8.0, 0.0)
    lin.weight.requires_grad_(False)
    lin.bias.requires_grad_(False)
    x = torch.randn(10, 64, requires_grad=True)
    params = 2 * (4 * 64 + 32 * 4) * 4  # A and B of both slices
    assert saved_bytes(lambda: lin(x)) <= x.nbytes + lin.weight.nbytes + params + 2 * 10 * 4 * 4
