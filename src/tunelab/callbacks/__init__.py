"""Callbacks used by every task: LR schedule, gradient clipping, responses, and more."""
