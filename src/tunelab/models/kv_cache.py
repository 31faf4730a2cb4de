"""The key/value cache of incremental decoding, and the RoPE tables generation starts from."""

from __future__ import annotations

import torch

from tunelab.models.config import Config
from tunelab.models.rope import rope_tables


def rope_cache(cfg: Config, length: int, device: torch.device | None = None):
    """cos/sin tables of shape (length, rotary_dim) of the global layers (see models/rope.py)."""
    return rope_tables(cfg, length, device)


class KVCache:
    """Preallocated keys/values for every layer, plus which cached keys are real (not padding)."""

    def __init__(self, cfg: Config, batch: int, max_len: int, device, dtype) -> None:
        shape = (batch, cfg.n_kv_head, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.key_valid = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.length = 0
        self.max_len = max_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; asked for {end}")
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]
