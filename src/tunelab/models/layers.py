"""The decoder's small layers: RMSNorm in its variants, the norm factory, the MLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.models.config import Config


class RMSNorm(nn.Module):
    """RMSNorm; unit_offset: scale by (1 + w) (Gemma); scale_fp32: scale before casting back."""

    def __init__(
        self, dim: int, eps: float, unit_offset: bool = False, scale_fp32: bool = False
    ) -> None:
        super().__init__()
        self.eps, self.unit_offset, self.scale_fp32 = eps, unit_offset, scale_fp32
        self.weight = nn.Parameter(torch.zeros(dim) if unit_offset else torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.unit_offset:
            return (x * (1.0 + self.weight.float())).to(dtype)
        if self.scale_fp32:
            return (self.weight * x).to(dtype)
        return self.weight * x.to(dtype)


def make_norm(cfg: Config, dim: int | None = None) -> nn.Module:
    dim = dim or cfg.n_embd
    if cfg.norm_type == "rmsnorm":
        return RMSNorm(dim, cfg.norm_eps, cfg.norm_unit_offset, cfg.norm_scale_fp32)
    return nn.LayerNorm(dim, eps=cfg.norm_eps)


def _activation(name: str):
    if name == "silu":
        return F.silu
    if name == "gelu_tanh":
        return lambda x: F.gelu(x, approximate="tanh")
    return F.gelu


class _GatedActivation(torch.autograd.Function):
    """act(gate) * up that saves only gate and up for its backward.

    Autograd would also keep act(gate) (a third tokens x intermediate tensor per layer, a
    seventh of a SwiGLU model's saved activations); it is recomputed here, an elementwise pass.
    The backward uses ATen's own derivative kernels, so gradients are bitwise those of autograd.
    """

    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor, name: str) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        ctx.name = name
        return _activation(name)(gate) * up

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        gate, up = ctx.saved_tensors
        name = ctx.name
        grad_gate = grad_up = None
        if ctx.needs_input_grad[1]:
            grad_up = grad * _activation(name)(gate)
        if ctx.needs_input_grad[0]:
            g = grad * up
            if name == "silu":
                grad_gate = torch.ops.aten.silu_backward(g, gate)
            else:
                approximate = "tanh" if name == "gelu_tanh" else "none"
                grad_gate = torch.ops.aten.gelu_backward(g, gate, approximate=approximate)
        return grad_gate, grad_up, None


def gated_activation(gate: torch.Tensor, up: torch.Tensor, name: str) -> torch.Tensor:
    """act(gate) * up (SwiGLU / GeGLU), keeping two tensors for the backward instead of three."""
    if torch.is_grad_enabled() and (gate.requires_grad or up.requires_grad):
        return _GatedActivation.apply(gate, up, name)
    return _activation(name)(gate) * up


class MLP(nn.Module):
    """Gated (Llama-style family): down(act(gate(x)) * up(x)); GPT-2: proj(act(fc(x)))."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.swiglu = cfg.family == "llama"  # gated layout (SwiGLU, or GeGLU with gelu_tanh)
        self.act_name = cfg.mlp_activation
        self.act = _activation(cfg.mlp_activation)
        bias = cfg.mlp_bias
        if self.swiglu:
            self.gate = nn.Linear(cfg.n_embd, cfg.intermediate_size, bias=bias)
            self.up = nn.Linear(cfg.n_embd, cfg.intermediate_size, bias=bias)
            self.down = nn.Linear(cfg.intermediate_size, cfg.n_embd, bias=bias)
        else:
            self.fc = nn.Linear(cfg.n_embd, cfg.intermediate_size, bias=bias)
            self.proj = nn.Linear(cfg.intermediate_size, cfg.n_embd, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            return self.down(gated_activation(self.gate(x), self.up(x), self.act_name))
        return self.proj(self.act(self.fc(x)))
