"""Sweeps and tracking end to end: multirun launchers, Optuna, W&B runs per job, DDP, summarize."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tunelab.models.loaders.checkpoint import read_checkpoint
from tunelab.summarize import main as summarize_main
from tunelab.utils.wandb_files import offline_runs, read_offline_run


def fast_overrides(toy_file: Path) -> list[str]:
    return [
        "model=tiny-gpt2",
        "trainer=cpu",
        "data=instructions_file",
        f"data.path={toy_file}",
        "data.split=[0.75,0.125,0.125]",
        "data.batch_size=2",
        "trainer.max_epochs=1",
        "trainer.log_every_n_steps=1",
        "extras.print_config=false",
        "~callbacks.progress_bar",
        "callbacks.responses.max_new_tokens=2",
    ]


def run_train(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "TUNELAB_ROOT": str(cwd)}
    res = subprocess.run(
        [sys.executable, "-m", "tunelab.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    return res


def sweep_dir(root: Path, task: str = "train") -> Path:
    (folder,) = (root / "logs" / task / "multiruns").iterdir()
    return folder


def test_multirun_gives_one_offline_wandb_run_per_job_grouped_by_sweep(tmp_path, toy_file):
    run_train(["-m", *fast_overrides(toy_file), "logger=many", "optimizer.lr=1e-4,3e-4"], tmp_path)
    folder = sweep_dir(tmp_path)
    runs = [read_offline_run(p) for p in offline_runs(folder)]
    assert len(runs) == 2
    assert len({r["id"] for r in runs}) == 2
    assert {r["group"] for r in runs} == {f"train/{folder.name}"}
    lrs = sorted(r["config"]["optimizer"]["lr"] for r in runs)
    assert lrs == [1e-4, 3e-4]
    for r in runs:
        assert any("optimizer.lr=" in t for t in r["tags"])
        losses = [row["train/loss_step"] for row in r["history"] if "train/loss_step" in row]
        assert losses and all(v > 0 for v in losses)
        assert "val/loss" in r["summary"]
    # The W&B id kept in each job folder is the id of that job's run (for resume).
    ids = {(folder / str(n) / "wandb_id.txt").read_text().strip() for n in (0, 1)}
    assert ids == {r["id"] for r in runs}
    # summarize: one row per job, swept column and metrics.
    assert summarize_main([str(folder)]) == 0
    table = (folder / "summary.md").read_text().splitlines()
    assert table[0].startswith("| job | optimizer.lr |") and "val/loss" in table[0]
    assert len(table) == 4


@pytest.mark.parametrize(
    "launcher",
    [  # ~30 s each: slow, so the default run stays near 10 minutes (multirun is tested above)
        pytest.param("local_parallel", marks=pytest.mark.slow),
        pytest.param("submitit_local", marks=pytest.mark.slow),
    ],
)
def test_parallel_launchers_run_a_two_job_sweep(tmp_path, toy_file, launcher):
    extra = ["hydra.launcher.timeout_min=5"] if launcher == "submitit_local" else []
    run_train(
        [
            "-m",
            *fast_overrides(toy_file),
            f"hydra/launcher={launcher}",
            *extra,
            "seed=1,2",
            "~callbacks.responses",
        ],
        tmp_path,
    )
    folder = sweep_dir(tmp_path)
    metrics = [json.loads((folder / str(n) / "metrics.json").read_text()) for n in (0, 1)]
    assert all(m["global_step"] == 3 for m in metrics)
    assert metrics[0]["val/loss"] != metrics[1]["val/loss"]  # different seeds, different runs


def test_optuna_search_returns_its_best_value(tmp_path, toy_file):
    run_train(
        [
            "-m",
            "hparams_search=sft_optuna",
            *fast_overrides(toy_file),
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.sampler.n_startup_trials=2",
            "~callbacks.responses",
        ],
        tmp_path,
    )
    folder = sweep_dir(tmp_path)
    best = yaml.safe_load((folder / "optimization_results.yaml").read_text())
    values = [
        json.loads((folder / str(n) / "metrics.json").read_text())["val/loss"] for n in (0, 1)
    ]
    assert best["best_value"] == pytest.approx(min(values))
    assert "optimizer.lr" in best["best_params"]


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(tmp_path, toy_file):
    # SGD, not Adam: Adam turns last-bit differences in near-zero gradients into +-lr steps.
    common = [
        *fast_overrides(toy_file),
        "~callbacks.responses",
        "data.shuffle=false",
        "data.split=[1.0,0.0,0.0]",
        "optimizer=sgd",
        "optimizer.lr=0.1",
        "trainer.max_epochs=2",
    ]
    one, two = tmp_path / "one", tmp_path / "two"
    run_train([*common, "data.batch_size=4", f"hydra.run.dir={one}"], tmp_path)
    run_train([*common, "trainer=ddp", "data.batch_size=2", f"hydra.run.dir={two}"], tmp_path)
    # One output folder for both ranks: no second timestamped run folder appeared.
    assert not (tmp_path / "logs").exists()
    m1 = json.loads((one / "metrics.json").read_text())
    m2 = json.loads((two / "metrics.json").read_text())
    assert m1["global_step"] == m2["global_step"] == 4
    assert m2["train/loss_epoch"] == pytest.approx(m1["train/loss_epoch"], rel=1e-4)
    w1 = read_checkpoint(one / "checkpoints" / "last.ckpt")["state_dict"]
    w2 = read_checkpoint(two / "checkpoints" / "last.ckpt")["state_dict"]
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-5
    assert torch.equal(w1["model.wte.weight"], w1["model.lm_head.weight"])
