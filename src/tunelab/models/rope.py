"""Rotary position embeddings: plain, and the scaled kinds released checkpoints use.

`Config.rope_scaling` holds the checkpoint's own parameters (`rope_type` plus its numbers, in
Hugging Face's standardized form); `inverse_frequencies` turns them into the per-pair rotation
speeds and the factor cos/sin are multiplied by (YaRN's and LongRoPE's attention scaling). Tables
are in the half-rotation layout of HF Llama (`rotate_half`), over the first `Config.rotary_dim`
dimensions of each head.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from tunelab.models.config import Config


def _plain(base: float, dim: int, device=None) -> torch.Tensor:
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim
    return 1.0 / (base**exponents)


def _llama3(inv: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:
    factor, low, high = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
    old_len = p["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > old_len / low, inv / factor, inv)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_len / high) * ~(wavelen > old_len / low)
    return torch.where(medium, smoothed, scaled)


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(
    base: float, dim: int, p: dict[str, Any], context_length: int, device=None
) -> tuple[torch.Tensor, float]:
    original = p["original_max_position_embeddings"]
    factor = p.get("factor") or context_length / original
    attention = p.get("attention_factor")
    if attention is None:
        mscale, mscale_all = p.get("mscale"), p.get("mscale_all_dim")
        if mscale and mscale_all:
            attention = _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all)
        else:
            attention = _yarn_mscale(factor)
    beta_fast, beta_slow = p.get("beta_fast") or 32, p.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolation = (1 - ramp).to(device)
    pos_freqs = base ** (torch.arange(0, dim, 2, device=device).float() / dim)
    inv = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv, float(attention)


def _longrope(
    base: float, dim: int, p: dict[str, Any], context_length: int, seq_len: int, device=None
) -> tuple[torch.Tensor, float]:
    original = p["original_max_position_embeddings"]
    factor = p.get("factor") or context_length / original
    attention = p.get("attention_factor")
    if attention is None:
        attention = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))
    ext = p["long_factor"] if seq_len > original else p["short_factor"]
    ext = torch.tensor(ext, dtype=torch.float32, device=device)
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim
    return 1.0 / (ext * base**exponents), float(attention)


def inverse_frequencies(
    cfg: Config, local: bool = False, seq_len: int = 0, device=None
) -> tuple[torch.Tensor, float]:
    """(inverse frequencies (rotary_dim / 2,), cos/sin scale) of global or local layers.

    seq_len: one more than the largest position of the current forward; LongRoPE switches from its
    short to its long factors past the original context, as transformers does per call.
    """
    dim = cfg.rotary_dim
    if local:  # Gemma 3's sliding-window layers: plain RoPE with their own base
        return _plain(cfg.rope_local_base, dim, device), 1.0
    p = cfg.rope_scaling or {"rope_type": "default"}
    kind = p["rope_type"]
    if kind == "default":
        return _plain(cfg.rope_base, dim, device), 1.0
    if kind == "linear":
        return _plain(cfg.rope_base, dim, device) / p["factor"], 1.0
    if kind == "llama3":
        return _llama3(_plain(cfg.rope_base, dim, device), p), 1.0
    if kind == "yarn":
        return _yarn(cfg.rope_base, dim, p, cfg.context_length, device)
    if kind == "longrope":
        return _longrope(cfg.rope_base, dim, p, cfg.context_length, seq_len, device)
    raise ValueError(f"RoPE type {kind!r} is not implemented")


def uses_long_factors(cfg: Config, seq_len: int) -> bool:
    p = cfg.rope_scaling
    return (
        bool(p and p["rope_type"] == "longrope") and seq_len > p["original_max_position_embeddings"]
    )


def rope_tables(
    cfg: Config, length: int, device=None, local: bool = False, seq_len: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape (length, rotary_dim) in HF Llama's half-rotation layout."""
    inv, scale = inverse_frequencies(cfg, local, seq_len, device)
    t = torch.arange(length, dtype=torch.float32, device=device)
    freqs = torch.outer(t, inv)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos() * scale, emb.sin() * scale


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, D); cos/sin: (B, 1, T, R) with R <= D: the first R dimensions rotate."""
    rot = cos.shape[-1]
    if rot < x.shape[-1]:
        return torch.cat([apply_rope(x[..., :rot], cos, sin), x[..., rot:]], dim=-1)
    half = rot // 2
    # x * cos + rotate_half(x) * sin, the rotated halves added into x * cos in place: the same
    # products and sums, without the rotated copy and two more (B, H, T, D) temporaries
    # (separate products, not addcmul_, whose fused kernel rounds differently from HF's)
    out = x * cos
    out[..., :half].sub_(x[..., half:] * sin[..., :half])
    out[..., half:].add_(x[..., :half] * sin[..., half:])
    return out.to(x.dtype)
