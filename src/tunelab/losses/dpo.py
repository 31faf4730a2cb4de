"""The DPO loss family as pure functions of per-sequence log-probabilities.

With h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)) (policy log-ratio of the
chosen answer minus that of the rejected one) and eps = label_smoothing:

- sigmoid  (DPO, Rafailov et al. 2023):   -log s(beta h); with eps > 0 it is conservative DPO
           (Mitchell 2023):                -(1 - eps) log s(beta h) - eps log s(-beta h)
- robust   (Chowdhury et al. 2024):        (-(1 - eps) log s(beta h) + eps log s(-beta h)) / (1 - 2 eps)
- ipo      (Azar et al. 2023, eq. 17):     (h - 1 / (2 beta))^2   (beta is the paper's tau)
- hinge    (SLiC, Zhao et al. 2023):       relu(1 - beta h)

These are the formulas TRL's DPOTrainer uses. IPO is defined on per-token *average* log-probs
(TRL averages for `ipo`); the function takes whatever log-probs it is given, so the caller
(`tunelab.tasks.dpo.DPOTask`, `average_logps`) decides. Rewards are beta x (policy - reference)
log-probs, detached: they are for logging, not for the gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tunelab.losses.lm import IGNORE_INDEX, target_logprobs

LOSS_TYPES = ("sigmoid", "robust", "ipo", "hinge")


def check_dpo_args(beta: float, loss_type: str, label_smoothing: float) -> None:
    """Raise a ValueError naming the bad knob (used at config time and by `dpo_loss`)."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(
            f"task.loss_type: expected one of {', '.join(LOSS_TYPES)}, got {loss_type!r}"
        )
    if not beta > 0:
        raise ValueError(f"task.beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(
            f"task.label_smoothing must be in [0, 0.5) (the probability that a label is flipped), "
            f"got {label_smoothing}"
        )
    if label_smoothing and loss_type not in ("sigmoid", "robust"):
        raise ValueError(
            f"task.label_smoothing applies to loss_type sigmoid or robust, not {loss_type!r}"
        )


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses, chosen rewards and rejected rewards, each of shape (B,).

    All four inputs are (B,) sequence log-probabilities (summed or averaged over the completion
    tokens). Take `.mean()` of the losses for the batch loss.
    """
    check_dpo_args(beta, loss_type, label_smoothing)
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    h = chosen_logratios - rejected_logratios
    eps = label_smoothing
    if loss_type == "sigmoid":
        losses = -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
    elif loss_type == "robust":
        losses = (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (
            1 - 2 * eps
        )
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:  # hinge
        losses = torch.relu(1 - beta * h)
    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    return losses, chosen_rewards, rejected_rewards


def segment_logprobs(
    logits: torch.Tensor,
    targets: torch.Tensor,
    segment_ids: torch.Tensor,
    n_segments: int,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log p(target) per segment for packed rows, and the token count per segment.

    segment_ids: (B, T) index in [0, n_segments) of the sequence each target belongs to, -1 for
    none. The packed counterpart of `token_logprobs` (which treats each row as one sequence).
    Returns (logps (n_segments,), counts (n_segments,)).
    """
    logp = target_logprobs(logits, targets, ignore_index)
    return sum_by_segment(logp, targets != ignore_index, segment_ids, n_segments)


def sum_by_segment(
    logp: torch.Tensor, counted: torch.Tensor, segment_ids: torch.Tensor, n_segments: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-segment sums of the (B, T) `logp` over `counted` positions, and per-segment counts."""
    mask = counted & (segment_ids >= 0)
    seg = segment_ids[mask]
    sums = torch.zeros(n_segments, dtype=logp.dtype, device=logp.device).index_add(
        0, seg, logp[mask]
    )
    counts = torch.zeros(n_segments, dtype=torch.long, device=logp.device).index_add(
        0, seg, torch.ones_like(seg)
    )
    return sums, counts
