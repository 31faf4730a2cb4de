"""What a training step keeps for its backward: the gated MLP, the LoRA layer and RoPE hold no extra
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


def _rope_by_the_book(x, cos, sin):
    """HF Llama's apply_rotary_pos_emb (rotate_half), partial rotary as in Phi/GPT-NeoX."""
    rot = cos.shape[-1]
    if rot < x.shape[-1]:
        return torch.cat([_rope_by_the_book(x[..., :rot], cos, sin), x[..., rot:]], dim=-1)
    half = rot // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rotary", [64, 32])
def test_in_place_rope_is_bitwise_rotate_half(dtype, rotary):
    from tunelab.models.rope import apply_rope

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 9, 50, 64, generator=g).to(dtype).requires_grad_()
    cos, sin = torch.randn(2, 1, 1, 50, rotary, generator=g)
    grad = torch.randn(2, 9, 50, 64, generator=g).to(dtype)
    ours, book = apply_rope(x, cos, sin), _rope_by_the_book(x, cos, sin)
    assert torch.equal(ours, book)
    assert torch.equal(*(torch.autograd.grad(y, x, grad)[0] for y in (ours, book)))
