"""Losses as pure functions of tensors."""

from tunelab.losses.dpo import dpo_loss, segment_logprobs
from tunelab.losses.lm import masked_cross_entropy, token_logprobs

__all__ = ["dpo_loss", "masked_cross_entropy", "segment_logprobs", "token_logprobs"]
