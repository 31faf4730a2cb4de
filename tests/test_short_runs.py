"""Short runs (issue 15 part 1): every finished run validates its last step and has best.ckpt;
a missing optimized_metric stops only a sweeper that reads it; grid multiruns never stop."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import compose_train
from tunelab.models.loaders.checkpoint import read_checkpoint
from tunelab.train import check_run_length, optimized_value, train


def short_run(toy_file: Path, *extra: str) -> list[str]:
    # 8 toy records: 6 train (3 batches of 2 per epoch), 1 val, 1 test
    return [
        "model=tiny-gpt2",
        "trainer=cpu",
        "data=instructions_file",
        f"data.path={toy_file}",
        "data.split=[0.75,0.125,0.125]",
        "data.batch_size=2",
        "trainer.log_every_n_steps=1",
        "+trainer.enable_progress_bar=false",
        "~callbacks.progress_bar",
        "~callbacks.responses",
        *extra,
    ]


def val_rows(run: Path) -> list[dict]:
    with open(run / "csv" / "metrics.csv") as f:
        return [r for r in csv.DictReader(f) if r.get("val/loss")]


def test_a_run_stopping_mid_epoch_validates_its_last_step(tmp_path, toy_file):
    cfg = compose_train(short_run(toy_file, "trainer.max_steps=2"), tmp_path)
    value = train(cfg)  # optimized_metric: val/loss
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["global_step"] == 2 and value == pytest.approx(metrics["val/loss"])
    assert read_checkpoint(tmp_path / "checkpoints" / "best.ckpt")["global_step"] == 2
    assert [r["step"] for r in val_rows(tmp_path)] == ["1"]  # validated once, at the last step


def test_a_final_epoch_that_check_val_every_n_epoch_skips_is_validated(tmp_path, toy_file):
    extra = ("trainer.max_epochs=2", "trainer.check_val_every_n_epoch=3")
    train(compose_train(short_run(toy_file, *extra), tmp_path))
    assert read_checkpoint(tmp_path / "checkpoints" / "best.ckpt")["global_step"] == 6
    assert len(val_rows(tmp_path)) == 1


def test_a_missing_optimized_metric_is_a_warning_unless_a_sweeper_reads_it(monkeypatch, caplog):
    with caplog.at_level("WARNING"):
        assert optimized_value("val/loss", {"train/loss": 1.0}) is None
    assert "optimized_metric 'val/loss' was not logged; logged: ['train/loss']" in caplog.text
    assert optimized_value("train/loss", {"train/loss": 1.0}) == 1.0
    monkeypatch.setattr("tunelab.train.sweeper_needs_metric", lambda: True)  # e.g. Optuna
    with pytest.raises(KeyError, match="optimized_metric 'val/loss' was not logged"):
        optimized_value("val/loss", {"train/loss": 1.0})


def test_a_run_without_validation_still_succeeds(tmp_path, toy_file):
    extra = ("trainer.max_steps=1", "+trainer.limit_val_batches=0")
    assert train(compose_train(short_run(toy_file, *extra), tmp_path)) is None
    assert json.loads((tmp_path / "metrics.json").read_text())["global_step"] == 1


def test_run_lengths_that_train_nothing_are_refused():
    from omegaconf import OmegaConf

    for key, value in (("max_steps", 0), ("max_epochs", 0), ("max_steps", -5)):
        with pytest.raises(ValueError, match=f"trainer.{key}={value}: nothing would be trained"):
            check_run_length(OmegaConf.create({key: value}))
    check_run_length(OmegaConf.create({"max_steps": -1, "max_epochs": None}))


@pytest.mark.slow  # two subprocess jobs: ~2 min on the loaded 2-core machine
def test_a_grid_multirun_of_short_runs_finishes_every_job(tmp_path, toy_file):
    args = ["-m", *short_run(toy_file, "optimizer.lr=1e-3,1e-4", "trainer.max_steps=2")]
    env = {**os.environ, "WANDB_MODE": "offline", "TUNELAB_ROOT": str(tmp_path)}
    res = subprocess.run(
        [sys.executable, "-m", "tunelab.train", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    for job in ("0", "1"):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["global_step"] == 2 and "val/loss" in metrics
        assert (sweep / job / "checkpoints" / "best.ckpt").is_file()
