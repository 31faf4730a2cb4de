"""The forgetting study's plumbing: a tiny three-point `-m` sweep, then the report script."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "experiments" / "forgetting_replay"))
import report  # noqa: E402


def fake_job(
    folder: Path, ratio: float, lr: str, forgetting: float, adaptation: float, seed: int = 0
) -> None:
    """A job folder as tunelab.train writes it (only what report.py reads)."""
    (folder / ".hydra").mkdir(parents=True)
    overrides = [f"data.replay_ratio={ratio}", f"optimizer.lr={lr}", "experiment=cpt_replay"]
    overrides += [f"seed={seed}"] if seed else []
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    cfg = {
        "seed": 123,
        "data": {"replay_ratio": ratio, "batch_size": 4, "block_len": 128},
        "optimizer": {"lr": float(lr)},
        "callbacks": {"lr_schedule": {"peak_lr": None, "schedule": "cosine"}},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    metrics = {
        "val/old_loss@0": 3.0,
        "val/new_loss@0": 2.0,
        "val/old_loss": 3.0 + forgetting,
        "val/new_loss": 2.0 - adaptation,
        "forgetting": forgetting,
        "adaptation": adaptation,
        "train/replay_ratio_realised": ratio,
        "train/tokens_seen": 25600.0,
        "global_step": 50,
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_report_table_and_recovered_fraction_by_hand(tmp_path):
    sweep = tmp_path / "sweep"
    for i, (r, lr, f, a) in enumerate(
        [(0.0, "3e-4", 0.2, 0.5), (0.1, "3e-4", 0.05, 0.48), (0.5, "3e-4", -0.01, 0.4),
         (0.0, "1e-4", 0.0, 0.3), (0.1, "1e-4", 0.01, 0.29)]
    ):  # fmt: skip
        fake_job(sweep / str(i), r, lr, f, a)
    rows = report.collect(sweep)
    by = {(r["group"], r["replay_ratio"]): r for r in rows}
    assert set(by) == {
        ("optimizer.lr=3e-4", 0.0), ("optimizer.lr=3e-4", 0.1), ("optimizer.lr=3e-4", 0.5),
        ("optimizer.lr=1e-4", 0.0), ("optimizer.lr=1e-4", 0.1),
    }  # fmt: skip
    assert by[("optimizer.lr=3e-4", 0.0)]["recovered"] == pytest.approx(0.0)
    assert by[("optimizer.lr=3e-4", 0.1)]["recovered"] == pytest.approx(0.75)  # 1 - 0.05/0.2
    assert by[("optimizer.lr=3e-4", 0.5)]["recovered"] == pytest.approx(1.05)
    assert by[("optimizer.lr=1e-4", 0.1)]["recovered"] is None  # no forgetting at r = 0
    table = report.markdown_table(rows)
    assert "| 0.1 | 0.1000 | 3.0500 | 1.5200 | +0.0500 | +0.4800 | 75% |" in table
    assert "| 0.1 | 0.1000 | 3.0100 | 1.7100 | +0.0100 | +0.2900 | n/a |" in table
    # A second seed of the lr=3e-4 group: the means table averages the two.
    fake_job(sweep / "seed2" / "0", 0.0, "3e-4", 0.4, 0.5, seed=2)
    fake_job(sweep / "seed2" / "1", 0.1, "3e-4", 0.15, 0.44, seed=2)
    rows = report.collect(sweep)
    means = {(m["group"], m["replay_ratio"]): m for m in report.seed_means(rows)}
    m = means[("optimizer.lr=3e-4", 0.1)]
    assert m["n"] == 2 and m["forgetting"] == pytest.approx(0.1)
    assert m["recovered"] == pytest.approx(1 - 0.1 / 0.3)
    assert means[("optimizer.lr=3e-4", 0.5)]["n"] == 1
    table = report.markdown_table(rows)
    assert "**Mean over seeds** (min to max in brackets)" in table
    assert "| 0.1 (optimizer.lr=3e-4) | 2 | 3.1000 | 1.5400 | +0.1000 [+0.0500, +0.1500]" in table
    out = tmp_path / "out"
    assert report.main([str(sweep), "--out", str(out)]) == 0
    assert (out / "forgetting.png").exists() and len(
        (out / "results.csv").read_text().splitlines()
    ) == 8
    assert report.main([str(tmp_path / "nothing")]) == 1


def test_three_point_sweep_through_the_cli_and_the_report(tmp_path):
    new, old = tmp_path / "new.jsonl", tmp_path / "old.txt"
    new.write_text(
        "".join(
            json.dumps({"text": f"def f{i}(x):\n    return x + {i}\n"}) + "\n" for i in range(40)
        )
    )
    old.write_text(" ".join(f"The mill by the river {i} is old." for i in range(60)))
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable, "-m", "tunelab.train", "-m",
        "experiment=cpt_replay", "hparams_search=forgetting_replay",
        "model=tiny-gpt2", f"data.new={new}", f"data.old=[{old}]",
        "data.replay_ratio=0,0.25,0.5",  # replaces the study's six ratios
        "data.block_len=16", "data.train_batches=4", "data.val_blocks=4",
        "trainer.val_check_interval=2", "optimizer.lr=3e-3",
        "extras.print_config=false", "~callbacks.progress_bar",
        "+trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep}",
    ]  # fmt: skip
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2"]
    assert not list(sweep.rglob("*.ckpt"))  # the study saves no checkpoints
    out = tmp_path / "report"
    assert report.main([str(sweep), "--out", str(out)]) == 0
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["replay_ratio"]) for r in rows] == [0.0, 0.25, 0.5]
    assert [float(r["replay_ratio_realised"]) for r in rows] == [0.0, 0.25, 0.5]
    for r in rows:
        assert int(r["steps"]) == 4 and int(float(r["train_tokens"])) == 4 * 4 * 16
        assert float(r["forgetting"]) == pytest.approx(
            float(r["old_loss"]) - float(r["old_loss@0"])
        )
        assert float(r["adaptation"]) == pytest.approx(
            float(r["new_loss@0"]) - float(r["new_loss"])
        )
    # Every job starts from the same model and validation blocks: one step-0 baseline.
    assert len({r["old_loss@0"] for r in rows}) == 1 and len({r["new_loss@0"] for r in rows}) == 1
    table = (out / "results.md").read_text()
    assert "| replay ratio r | realised | old loss | new loss | forgetting | adaptation" in table
    assert (
        sum(line.startswith(("| 0 |", "| 0.25 |", "| 0.5 |")) for line in table.splitlines()) == 3
    )
    assert (out / "forgetting.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
