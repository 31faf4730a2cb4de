import math

import pytest

from tunelab.callbacks.lr_schedule import WarmupCosineLR, lr_at


def test_lr_at_warmup_start_end_mid_decay_and_end():
    kw = dict(total_steps=110, peak_lr=1e-3, warmup_steps=10, initial_lr=1e-5, min_lr=1e-4)
    assert lr_at(0, **kw) == pytest.approx(1e-5)
    assert lr_at(5, **kw) == pytest.approx(1e-5 + 5 * (1e-3 - 1e-5) / 10)
    assert lr_at(10, **kw) == pytest.approx(1e-3)  # warmup end = peak
    assert lr_at(60, **kw) == pytest.approx(1e-4 + 0.9e-3 * 0.5)  # half-way: mean of peak/min
    assert lr_at(110, **kw) == pytest.approx(1e-4)  # the end: min_lr
    assert lr_at(35, **kw) == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi / 4)))


def test_restart_rewarms_and_constant_holds():
    kw = dict(total_steps=200, peak_lr=1e-3, warmup_steps=10, min_lr=0.0, restart_step=100)
    assert lr_at(100, **kw) == 0.0
    assert lr_at(110, **kw) == pytest.approx(1e-3)
    assert lr_at(200, **kw) == pytest.approx(0.0)
    assert lr_at(7, total_steps=10, peak_lr=3e-4, schedule="constant") == 3e-4


def test_bad_schedule_is_a_config_error():
    with pytest.raises(ValueError, match="expected 'cosine' or 'constant'"):
        WarmupCosineLR(schedule="linear")
