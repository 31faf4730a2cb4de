"""Language-modelling losses: masked cross-entropy and per-sequence token log-probabilities."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def masked_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token cross-entropy over targets != ignore_index.

    logits: (B, T, V); targets: (B, T) already shifted (targets[t] is the token after input t).
    Returns (mean loss, number of counted tokens). With no counted token the loss is 0, not NaN.
    """
    flat_t = targets.reshape(-1)
    n = (flat_t != ignore_index).sum()
    loss_sum = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        flat_t,
        ignore_index=ignore_index,
        reduction="sum",
    )
    return loss_sum / n.clamp(min=1), n


def target_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """(B, T) log p(target) in fp32, 0 where targets == ignore_index."""
    mask = targets != ignore_index
    safe = targets.masked_fill(~mask, 0)
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return logp * mask


def token_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log p(target) per sequence over counted tokens, and the count per sequence.

    Returns (logps (B,), counts (B,)). Used by DPO on the completion tokens.
    """
    return target_logprobs(logits, targets, ignore_index).sum(-1), (targets != ignore_index).sum(-1)
