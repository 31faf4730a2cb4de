"""Losses as pure functions of tensors."""

from tunelab.losses.bradley_terry import bradley_terry_loss
from tunelab.losses.chunked import linear_cross_entropy, linear_target_logprobs
from tunelab.losses.dpo import dpo_loss, segment_logprobs, sum_by_segment
from tunelab.losses.lm import IGNORE_INDEX, masked_cross_entropy, target_logprobs, token_logprobs

__all__ = [
    "IGNORE_INDEX",
    "bradley_terry_loss",
    "dpo_loss",
    "linear_cross_entropy",
    "linear_target_logprobs",
    "masked_cross_entropy",
    "segment_logprobs",
    "sum_by_segment",
    "target_logprobs",
    "token_logprobs",
]
