"""The train entry point end to end: in process and as a subprocess."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, compose_train
from tunelab import load_model
from tunelab.train import train


def test_tiny_model_memorises_eight_records(tmp_path, toy_file):
    cfg = compose_train(
        [
            "model=tiny-gpt2",
            "trainer=cpu",
            "data=instructions_file",
            f"data.path={toy_file}",
            "data.split=[1.0,0.0,0.0]",
            "data.batch_size=8",
            "optimizer.lr=3e-3",
            "optimizer.weight_decay=0.0",
            "callbacks.lr_schedule.schedule=constant",
            "trainer.max_epochs=80",
            "data.mask_prompt=true",
            "trainer.check_val_every_n_epoch=40",
            "+trainer.enable_progress_bar=false",
            "~callbacks.progress_bar",
            "~callbacks.responses",
            "optimized_metric=train/loss_epoch",
        ],
        tmp_path,
    )
    final = train(cfg)
    assert final < 0.1, final
    # Best and last checkpoints load back through the public API, with tokenizer and style.
    model, tokenizer = load_model(str(tmp_path / "checkpoints" / "last.ckpt"))
    assert tokenizer.name == "gpt2" and model.cfg.n_layer == 2
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["train/loss_epoch"] == pytest.approx(final)
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("train/grad_norm") for r in rows) and any(r.get("train/lr") for r in rows)


def test_train_entry_point_as_subprocess(tmp_path, toy_file):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "tunelab.train",
        "experiment=sft_gpt2",
        "model=tiny-gpt2",
        "trainer=cpu",
        "data=instructions_file",
        f"data.path={toy_file}",
        "data.split=[0.5,0.25,0.25]",
        f"hydra.run.dir={out}",
        "trainer.limit_train_batches=2",
        "callbacks.responses.max_new_tokens=4",
    ]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    responses = json.loads((out / "responses.json").read_text())
    assert len(responses) == 2 and all("model_response" in r for r in responses)
    assert (out / "config.yaml").exists() and (out / "checkpoints" / "last.ckpt").exists()
    assert (out / "checkpoints" / "best.ckpt").exists()


def test_bad_input_gives_one_line_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{oops}\n')
    cases = [
        (["data=instructions_file", f"data.path={bad}"], f"error: {bad}:2: malformed JSON line"),
        (["model.prompt_style=vicuna"], "error: unknown prompt style 'vicuna'"),
        ([f"model.source={tmp_path / 'missing'}"], "is neither a preset"),
    ]
    for overrides, expected in cases:
        cmd = [
            sys.executable,
            "-m",
            "tunelab.train",
            "trainer=cpu",
            f"hydra.run.dir={tmp_path / 'r'}",
            "extras.print_config=false",
            *overrides,
        ]
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert res.returncode == 1, res.stderr[-2000:]
        last = res.stderr.strip().splitlines()[-1]
        assert expected in last, res.stderr[-2000:]
        assert "Traceback" not in res.stderr
