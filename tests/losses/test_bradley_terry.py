"""Bradley-Terry loss: hand-worked values and TRL RewardTrainer's own compute_loss."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from tunelab.losses import bradley_terry_loss


def test_hand_worked_values():
    c, r = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0])
    # -log s(1) = log(1 + e^-1) = 0.31326; -log s(0) = log 2 = 0.69315
    assert bradley_terry_loss(c, r).tolist() == pytest.approx([0.3132617, 0.6931472], abs=1e-6)
    # margin 1: -log s(2 - 1 - 1) = log 2; margin 0.5 on a tie: -log s(-0.5) = 0.97408
    out = bradley_terry_loss(c, r, margin=torch.tensor([1.0, 0.5]))
    assert out.tolist() == pytest.approx([math.log(2), 0.9740770], abs=1e-6)
    # centring 0.01: + 0.01 * (2 + 1)^2 = 0.09 on the first pair, + 0 on the second
    out = bradley_terry_loss(c, r, center_rewards_coefficient=0.01)
    assert out.tolist() == pytest.approx([0.3132617 + 0.09, 0.6931472], abs=1e-6)
    with pytest.raises(ValueError, match="differ in shape"):
        bradley_terry_loss(c, r[:1])


def test_gradient_by_hand():
    c = torch.tensor([0.5], requires_grad=True)
    r = torch.tensor([-0.5], requires_grad=True)
    bradley_terry_loss(c, r).sum().backward()
    # d/dc -log s(c - r) = -(1 - s(1)) = -0.26894; d/dr = +0.26894
    assert c.grad.item() == pytest.approx(-0.2689414, abs=1e-6)
    assert r.grad.item() == pytest.approx(0.2689414, abs=1e-6)


class _Gather:
    def gather_for_metrics(self, x):
        return x

    def gather(self, x):
        return x


@pytest.mark.parametrize(
    ("margin", "coef"), [(False, None), (True, None), (True, 0.01), (False, 0.3)]
)
def test_equals_trl_reward_trainer(margin, coef):
    from trl import RewardTrainer

    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(8, 1, generator=g)  # 4 chosen then 4 rejected, as TRL orders them
    margins = torch.rand(4, generator=g)

    class Model(torch.nn.Module):
        def forward(self, **kwargs):
            return SimpleNamespace(logits=rewards)

    fake = SimpleNamespace(
        model=Model().train(),
        args=SimpleNamespace(center_rewards_coefficient=coef),
        accelerator=_Gather(),
        _total_train_tokens=0,
        _tp_size=1,
        _metrics={
            "train": {
                k: []
                for k in (
                    "num_tokens",
                    "min_reward",
                    "mean_reward",
                    "max_reward",
                    "accuracy",
                    "margin",
                )
            }
        },
    )
    inputs = {"input_ids": torch.zeros(8, 3, dtype=torch.long), "attention_mask": torch.ones(8, 3)}
    if margin:
        inputs["margin"] = margins
    expected = RewardTrainer.compute_loss(fake, fake.model, inputs)
    chosen, rejected = rewards.squeeze(-1).chunk(2)
    ours = bradley_terry_loss(chosen, rejected, margins if margin else None, coef).mean()
    assert ours.item() == pytest.approx(expected.item(), abs=1e-7)
