"""The DPO loss family against values worked out by hand.

The running example: policy log-probs (chosen, rejected) = (-1, -3), reference (-2, -2).
Log-ratios: chosen +1, rejected -1, so h = 2. With beta = 0.5, beta*h = 1 and
a = -log sigmoid(1) = log(1 + e^-1) = 0.31326168751822286; -log sigmoid(-1) = a + 1.
"""

from __future__ import annotations

import math

import pytest
import torch

from tunelab.losses import dpo_loss, segment_logprobs, token_logprobs
from tunelab.losses.dpo import LOSS_TYPES

A = math.log1p(math.exp(-1.0))  # -log sigmoid(1)


def run(loss_type: str, beta: float = 0.5, eps: float = 0.0, policy=(-1.0, -3.0), ref=(-2.0, -2.0)):
    t = [torch.tensor([v], dtype=torch.float64) for v in (*policy, *ref)]
    losses, chosen, rejected = dpo_loss(*t, beta=beta, loss_type=loss_type, label_smoothing=eps)
    return losses.item(), chosen.item(), rejected.item()


@pytest.mark.parametrize(
    ("loss_type", "beta", "eps", "expected"),
    [
        ("sigmoid", 0.5, 0.0, A),  # DPO: -log s(1)
        ("sigmoid", 0.5, 0.1, A + 0.1),  # cDPO: 0.9 a + 0.1 (a + 1)
        ("robust", 0.5, 0.0, A),  # eps = 0 is plain DPO
        ("robust", 0.5, 0.1, A - 0.125),  # (0.9 a - 0.1 (a + 1)) / 0.8 = a - 1/8
        ("ipo", 0.5, 0.0, 1.0),  # (2 - 1/(2*0.5))^2
        ("ipo", 0.1, 0.0, 9.0),  # (2 - 5)^2
        ("hinge", 0.5, 0.0, 0.0),  # relu(1 - 1)
        ("hinge", 0.25, 0.0, 0.5),  # relu(1 - 0.5)
    ],
)
def test_loss_values_by_hand(loss_type, beta, eps, expected):
    loss, chosen, rejected = run(loss_type, beta, eps)
    assert loss == pytest.approx(expected, abs=1e-12)
    # Rewards: beta x (policy - reference) log-prob, for every loss type.
    assert chosen == pytest.approx(beta * 1.0) and rejected == pytest.approx(beta * -1.0)


def test_a_preference_the_wrong_way_round():
    # Swapped policy: h = -2. sigmoid: -log s(-1) = a + 1; hinge (beta 0.5): relu(1 + 1) = 2;
    # ipo (beta 0.5): (-2 - 1)^2 = 9.
    swapped = {"policy": (-3.0, -1.0)}
    assert run("sigmoid", **swapped)[0] == pytest.approx(A + 1)
    assert run("hinge", **swapped)[0] == pytest.approx(2.0)
    assert run("ipo", **swapped)[0] == pytest.approx(9.0)


def test_equal_policy_and_reference_gives_log_2_and_zero_rewards():
    t = torch.tensor([-4.0, -7.5])
    losses, chosen, rejected = dpo_loss(t, t - 1, t, t - 1, beta=0.1)
    assert torch.allclose(losses, torch.full((2,), math.log(2)))
    assert torch.equal(chosen, torch.zeros(2)) and torch.equal(rejected, torch.zeros(2))


def test_gradient_by_hand():
    # d/d(policy_chosen) of -log s(beta h) = -beta s(-beta h) = -0.5 s(-1) = -0.13447071...
    pc = torch.tensor([-1.0], dtype=torch.float64, requires_grad=True)
    pr = torch.tensor([-3.0], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([-2.0], dtype=torch.float64)
    losses, chosen, _ = dpo_loss(pc, pr, ref, ref, beta=0.5)
    losses.sum().backward()
    s = 1 / (1 + math.e)
    assert pc.grad.item() == pytest.approx(-0.5 * s) and pr.grad.item() == pytest.approx(0.5 * s)
    assert not chosen.requires_grad  # rewards are for logging only


def test_batch_shapes_and_every_type_runs():
    g = torch.Generator().manual_seed(0)
    logps = [-torch.rand(5, generator=g) * 10 for _ in range(4)]
    for loss_type in LOSS_TYPES:
        losses, c, r = dpo_loss(*logps, beta=0.2, loss_type=loss_type)
        assert losses.shape == c.shape == r.shape == (5,)
        assert torch.isfinite(losses).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"loss_type": "kto"}, "task.loss_type"),
        ({"beta": 0.0}, "task.beta"),
        ({"label_smoothing": 0.5, "loss_type": "robust"}, "task.label_smoothing"),
        ({"label_smoothing": 0.1, "loss_type": "ipo"}, "applies to loss_type sigmoid or robust"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    t = torch.zeros(1)
    with pytest.raises(ValueError, match=message):
        dpo_loss(t, t, t, t, **kwargs)


def test_segment_logprobs_matches_token_logprobs_on_packed_rows():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 6, 11, generator=g)
    targets = torch.randint(0, 11, (2, 6), generator=g)
    targets[0, 0] = targets[1, :2] = -100
    # Row 0 holds sequences 0 (positions 0-2) and 2 (3-5); row 1 holds sequence 1.
    seg = torch.tensor([[0, 0, 0, 2, 2, 2], [1, 1, 1, 1, 1, -1]])
    sums, counts = segment_logprobs(logits, targets, seg, 3)
    logp = torch.log_softmax(logits, -1)
    by_hand = [
        sum(logp[0, t, targets[0, t]] for t in (1, 2)),
        sum(logp[1, t, targets[1, t]] for t in (2, 3, 4)),
        sum(logp[0, t, targets[0, t]] for t in (3, 4, 5)),
    ]
    assert torch.allclose(sums, torch.stack(by_hand))
    assert counts.tolist() == [2, 3, 3]
    # One sequence per row: the same as token_logprobs.
    one = torch.tensor([[0] * 6, [1] * 6])
    s1, c1 = segment_logprobs(logits, targets, one, 2)
    s2, c2 = token_logprobs(logits, targets)
    assert torch.allclose(s1, s2) and torch.equal(c1, c2)
