"""Bradley-Terry loss for reward models, as a pure function of per-pair scalar rewards.

    loss_i = -log s(r_chosen_i - r_rejected_i - margin_i) + c (r_chosen_i + r_rejected_i)^2

`margin` (optional, per pair) asks the chosen reward to lead by at least that much (Llama 2's
margin loss); `center_rewards_coefficient` c (optional) pulls rewards towards zero mean
(Eisenstein et al. 2023). The batch mean of these per-pair losses is exactly TRL RewardTrainer's
loss: `-logsigmoid(c - r - m).mean() + coef * mean((c + r) ** 2)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | float | None = None,
    center_rewards_coefficient: float | None = None,
) -> torch.Tensor:
    """Per-pair losses (B,) from (B,) chosen and rejected rewards; `.mean()` for the batch."""
    if chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError(
            f"bradley_terry_loss: chosen {tuple(chosen_rewards.shape)} and rejected "
            f"{tuple(rejected_rewards.shape)} rewards differ in shape"
        )
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin
    losses = -F.logsigmoid(diff)
    if center_rewards_coefficient:
        losses = losses + center_rewards_coefficient * (chosen_rewards + rejected_rewards) ** 2
    return losses
