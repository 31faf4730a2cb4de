"""The book's warmup rounding and clipping start (appendix D), as tunelab options."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pytest
import torch

from tunelab.callbacks.grad_clip import GradClip
from tunelab.callbacks.lr_schedule import WarmupCosineLR


def _trainer(schedule: WarmupCosineLR | None, step: int, total: int = 103):
    opt = SimpleNamespace(defaults={"lr": 5e-5})
    callbacks = [schedule] if schedule is not None else []
    return SimpleNamespace(
        callbacks=callbacks, global_step=step, estimated_stepping_batches=total, optimizers=[opt]
    )


def test_fraction_warmup_nearest_is_21_and_floor_is_20_at_103_steps():
    assert WarmupCosineLR(warmup=0.2).resolve(_trainer(None, 0))[1] == 21
    assert WarmupCosineLR(warmup=0.2, warmup_rounding="floor").resolve(_trainer(None, 0))[1] == 20
    with pytest.raises(ValueError, match="warmup_rounding: expected 'nearest' or 'floor'"):
        WarmupCosineLR(warmup_rounding="ceil")


class _OneParam(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))
        self.logged = {}

    def log(self, name, value, **kwargs):
        self.logged[name] = value


@pytest.mark.parametrize(("step", "clipped"), [(0, False), (19, False), (20, True), (21, True)])
def test_clipping_from_the_warmup_end_as_appendix_d(step, clipped):
    schedule = WarmupCosineLR(warmup=0.2, warmup_rounding="floor")  # 20 warmup steps of 103
    module = _OneParam()
    module.w.grad = torch.tensor([3.0, 4.0])  # norm 5
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    GradClip(max_norm=1.0, start_step="warmup").on_before_optimizer_step(
        _trainer(schedule, step), module, opt
    )
    assert module.logged["train/grad_norm"] == 5.0  # logged before clipping, clipped or not
    expected = [0.6, 0.8] if clipped else [3.0, 4.0]
    assert torch.allclose(module.w.grad, torch.tensor(expected), atol=1e-6)


def test_clipping_from_warmup_needs_the_schedule_and_bad_start_is_refused():
    module = _OneParam()
    module.w.grad = torch.tensor([3.0, 4.0])
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="start_step=warmup needs the lr_schedule callback"):
        GradClip(start_step="warmup").on_before_optimizer_step(_trainer(None, 5), module, opt)
    with pytest.raises(ValueError, match="start_step: expected a step >= 0 or 'warmup'"):
        GradClip(start_step="end")
