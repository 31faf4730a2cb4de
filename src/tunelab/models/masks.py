"""Boolean attention masks for SDPA: causal, packed rows, left padding, sliding windows, a cache."""

from __future__ import annotations

import torch

from tunelab.models.kv_cache import KVCache


def build_mask(
    B: int,
    T: int,
    doc_ids: torch.Tensor | None,
    cache: KVCache | None,
    attention_mask: torch.Tensor | None,
    device: torch.device,
    window: int | None = None,
) -> torch.Tensor | None:
    """Boolean (B, 1, T, keys) mask, or None for SDPA's plain causal path.

    window: a query also sees only its last `window` keys (itself included), counted in
    cache slots as transformers does (left padding takes slots too).
    """
    if cache is None and doc_ids is None and attention_mask is None and window is None:
        return None  # plain causal: SDPA's fast is_causal path
    start = cache.length if cache is not None else 0
    total = start + T
    q_pos = torch.arange(start, total, device=device)
    k_pos = torch.arange(total, device=device)
    visible = k_pos[None, :] <= q_pos[:, None]
    if window is not None:
        visible = visible & (k_pos[None, :] > q_pos[:, None] - window)
    mask = visible.expand(B, 1, T, total)
    if doc_ids is not None:
        mask = mask & (doc_ids[:, None, :, None] == doc_ids[:, None, None, :])
    if cache is not None:
        valid = cache.key_valid
        valid[:, start:total] = attention_mask.bool() if attention_mask is not None else True
        mask = mask & valid[:, None, None, :total]
    elif attention_mask is not None:
        mask = mask & attention_mask.bool()[:, None, None, :]
    # A query row with no visible key (left padding) would give NaN: let it see itself.
    eye = torch.zeros(T, total, dtype=torch.bool, device=device)
    eye[torch.arange(T), torch.arange(start, total)] = True
    return mask | eye
