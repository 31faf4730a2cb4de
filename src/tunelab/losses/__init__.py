"""Losses as pure functions of tensors."""

from tunelab.losses.lm import masked_cross_entropy, token_logprobs

__all__ = ["masked_cross_entropy", "token_logprobs"]
