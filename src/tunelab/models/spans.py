"""Where each example of packed rows starts: the spans varlen attention runs over."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class PackedSpans(NamedTuple):
    """Where each example of packed rows starts in the flattened (B * T) tokens."""

    cu_seqlens: torch.Tensor  # (n + 1,) int32: 0, end of span 0, ..., B * T
    max_len: int


def packed_spans(doc_ids: torch.Tensor) -> PackedSpans:
    """Spans of equal doc id within each row (a padding run is a span of its own)."""
    B, T = doc_ids.shape
    flat = doc_ids.reshape(-1)
    starts = torch.zeros_like(flat, dtype=torch.bool)
    starts[::T] = True
    starts[1:] |= flat[1:] != flat[:-1]
    edges = torch.nonzero(starts).flatten()
    total = torch.tensor([flat.numel()], device=flat.device)
    cu = torch.cat([edges, total]).to(torch.int32)
    return PackedSpans(cu, int((cu[1:] - cu[:-1]).max()))


def host_spans(spans: PackedSpans, tokens: int, device: torch.device) -> PackedSpans:
    """Spans from the host on `device` (an asynchronous copy), checked against the batch's size."""
    cu = spans.cu_seqlens
    if cu.device.type == "cpu" and (cu.numel() < 2 or int(cu[-1]) != tokens):
        covered = int(cu[-1]) if cu.numel() else 0
        raise ValueError(
            f"packed spans (cu_seqlens) cover {covered} tokens, the batch has {tokens}"
        )
    return PackedSpans(cu.to(device, torch.int32, non_blocking=True), int(spans.max_len))


def per_span_causal(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spans: PackedSpans,
    scale: float | None = None,
) -> torch.Tensor:
    """Causal attention of each packed example on its own (the CPU's varlen attention).

    q: (B, H, T, D); k, v: (B, H_kv, T, D) with H_kv dividing H (grouped-query heads are not
    repeated); spans on the host. Returns (B, T, H, D). With a block-diagonal mask SDPA's CPU
    kernel would compute every (query, key) pair of the row, T^2; per example it is the sum of
    l^2 / 2, and no mask is built or saved.
    """
    B, H, T, D = q.shape
    extra = {} if scale is None else {"scale": scale}
    gqa = k.shape[1] != H
    cu = spans.cu_seqlens.tolist()
    parts = []
    for start, end in zip(cu[:-1], cu[1:], strict=True):
        row, a = divmod(start, T)  # spans never cross rows (packed_spans starts one per row)
        b = a + end - start
        y = F.scaled_dot_product_attention(
            q[row : row + 1, :, a:b],
            k[row : row + 1, :, a:b],
            v[row : row + 1, :, a:b],
            is_causal=True,
            enable_gqa=gqa,
            **extra,
        )
        parts.append(y.transpose(1, 2))  # (1, l, H, D)
    # the spans tile the flattened rows in order
    return torch.cat(parts, dim=1).view(B, T, H, D)
