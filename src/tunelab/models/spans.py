"""Where each example of packed rows starts: the spans varlen attention runs over."""

from __future__ import annotations

from typing import NamedTuple

import torch


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
