import math

import torch

from tunelab.losses import masked_cross_entropy, token_logprobs


def test_masked_cross_entropy_by_hand():
    # Uniform logits over 4 tokens: every counted token costs log(4).
    logits = torch.zeros(1, 3, 4)
    targets = torch.tensor([[1, -100, 3]])
    loss, n = masked_cross_entropy(logits, targets)
    assert int(n) == 2
    assert math.isclose(float(loss), math.log(4), rel_tol=1e-6)


def test_all_masked_gives_zero_not_nan():
    loss, n = masked_cross_entropy(torch.randn(1, 2, 5), torch.full((1, 2), -100))
    assert int(n) == 0 and float(loss) == 0.0


def test_token_logprobs_sums_per_sequence():
    logits = torch.log(torch.tensor([[[0.5, 0.5], [0.25, 0.75]]]))
    logps, counts = token_logprobs(logits, torch.tensor([[0, 1]]))
    assert math.isclose(float(logps[0]), math.log(0.5) + math.log(0.75), rel_tol=1e-6)
    assert counts.tolist() == [2]
