"""The forgetting study's plumbing: interval maths by hand, the report over fake job folders, and
a tiny `-m` sweep of the study's experiment through the CLI and the report."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "experiments" / "forgetting_replay"))
import report  # noqa: E402
import stats  # noqa: E402


def test_t_interval_by_hand():
    iv = stats.t_interval([1.0, 2.0, 3.0])
    # mean 2, s = sqrt((1 + 0 + 1) / 2) = 1, half = t(0.975, 2) * 1 / sqrt(3)
    assert (iv.n, iv.mean, iv.sd) == (3, 2.0, 1.0)
    assert iv.half == pytest.approx(4.30265273 / math.sqrt(3), abs=1e-12)
    assert iv.half == pytest.approx(2.4841377, abs=1e-7)
    assert (iv.lo, iv.hi) == pytest.approx((2.0 - 2.4841377, 2.0 + 2.4841377), abs=1e-7)
    # two values 0.1, 0.3: s = 0.1 * sqrt(2), half = t(0.975, 1) * s / sqrt(2) = 12.7062... * 0.1
    iv = stats.t_interval([0.1, 0.3])
    assert iv.mean == pytest.approx(0.2) and iv.sd == pytest.approx(0.1 * math.sqrt(2))
    assert iv.half == pytest.approx(1.270620474, abs=1e-12)
    one = stats.t_interval([0.5])
    assert (one.mean, one.sd, one.half, one.lo) == (0.5, None, None, None)
    with pytest.raises(ValueError, match="tabulated for 1-30"):
        stats.t_interval([0.0] * 32)
    with pytest.raises(ValueError, match="no values"):
        stats.t_interval([])
    with pytest.raises(ValueError, match="non-finite"):
        stats.t_interval([1.0, float("nan")])
    assert stats.reduction(0.47, 1.0) == pytest.approx(0.53)
    assert stats.reduction(0.1, 0.0) is None  # nothing to reduce at r = 0


def test_t_table_matches_scipy():
    from scipy import stats as sps

    for df in range(1, 31):
        assert stats.t975(df) == pytest.approx(sps.t.ppf(0.975, df), abs=1e-8)


def fake_job(
    folder: Path,
    ratio: float,
    lr: float,
    forgetting: float,
    adaptation: float,
    seed: int,
    acc: tuple[float, float] = (0.5, 0.3),
    lora: bool = False,
) -> None:
    """A job folder as tunelab.train writes it (only what report.py reads)."""
    (folder / ".hydra").mkdir(parents=True)
    overrides = [f"data.replay_ratio={ratio}", f"seed={seed}", "experiment=forgetting_cpt"]
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    cfg = {
        "seed": seed,
        "model": {"source": "base.ckpt", **({"lora": {"rank": 8}} if lora else {})},
        "data": {"replay_ratio": ratio, "batch_size": 32, "block_len": 64},
        "optimizer": {"lr": lr},
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
        "train/tokens_seen": 655360.0,
        "global_step": 320,
        "choice/old_cloze/acc": acc[0],
        "choice/new_code/acc": acc[1],
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_report_means_intervals_and_reductions_by_hand(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "metrics.json").write_text(
        json.dumps({"choice/old_cloze/acc": 0.6, "choice/new_code/acc": 0.25, "val/loss": 2.0})
    )
    sweep = tmp_path / "sweep"
    jobs = [  # (r, lr, forgetting, adaptation, seed, (old acc, new acc), lora)
        (0.0, 3e-3, 1.0, 0.5, 1, (0.40, 0.35), False),
        (0.0, 3e-3, 2.0, 0.6, 2, (0.45, 0.35), False),
        (0.0, 3e-3, 3.0, 0.7, 3, (0.50, 0.35), False),
        (0.25, 3e-3, 0.2, 0.4, 1, (0.58, 0.30), False),
        (0.25, 3e-3, 0.4, 0.4, 2, (0.58, 0.30), False),
        (0.0, 3e-3, 0.5, 0.1, 1, (0.55, 0.26), True),
    ]
    for i, (r, lr, f, a, seed, acc, lora) in enumerate(jobs):
        fake_job(sweep / str(i), r, lr, f, a, seed, acc, lora)
    rows = report.collect([sweep], base)
    assert [r["setting"] for r in rows] == ["full lr=0.003"] * 5 + ["lora lr=0.003"]
    assert rows[0]["old_blocks"] == 0 and rows[3]["old_blocks"] == 2560  # 0.25 * 320 * 32
    assert rows[0]["mc_forgetting"] == pytest.approx(0.2)  # 0.6 - 0.4
    assert rows[0]["mc_adaptation"] == pytest.approx(0.1)  # 0.35 - 0.25
    summary = {(s["setting"], s["replay_ratio"]): s for s in report.summarise(rows)}
    z = summary[("full lr=0.003", 0.0)]
    assert z["n"] == 3 and z["forgetting"].mean == pytest.approx(2.0)
    assert z["forgetting"].half == pytest.approx(2.4841377, abs=1e-7)  # sd 1 over 3 seeds
    assert z["mc_forgetting"].mean == pytest.approx(0.15)  # drops 0.20, 0.15, 0.10
    q = summary[("full lr=0.003", 0.25)]
    assert q["forgetting"].mean == pytest.approx(0.3)
    assert q["forgetting"].half == pytest.approx(1.270620474, abs=1e-9)  # sd 0.1*sqrt(2), n 2
    assert q["reduction"] == pytest.approx(0.85)  # 1 - 0.3 / 2.0
    assert q["mc_reduction"] == pytest.approx(1 - 0.02 / 0.15)
    # paired by seed: seed 1 1 - 0.2/1 = 0.8, seed 2 1 - 0.4/2 = 0.8: mean 0.8, no spread
    assert q["reduction_paired"].mean == pytest.approx(0.8) and q["reduction_paired"].half == 0
    assert [r["reduction_paired"] for r in rows[:3]] == [0.0, 0.0, 0.0]
    lora = summary[("lora lr=0.003", 0.0)]
    assert lora["n"] == 1 and lora["forgetting"].half is None
    table = report.markdown_table(report.summarise(rows))
    assert "| 0.25 | 2 | 2560 | +0.300 ± 1.271 | +0.400 ± 0.000 | 85% | +80 ± 0% |" in table
    assert "| 0 | 3 | 0 | +2.000 ± 2.484 | +0.600 ± 0.248 | 0% | +0 ± 0% | +15.0 ± 12.4 |" in table
    lines = report.bars(report.summarise(rows))
    assert (
        "- full lr=0.003: loss forgetting at r = 0 = +2.0000, seed sd 1.0000: 2.0x the sd"
        in (lines[0])
    )
    assert lines[0].endswith("(NOT met: >= 3x)")
    out = tmp_path / "out"
    assert report.main([str(sweep), "--base", str(base), "--out", str(out)]) == 0
    for name in ("forgetting.png", "lora_vs_full.png", "curves.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((out / "results.csv").read_text().splitlines()) == 7
    assert report.main([str(tmp_path / "nothing")]) == 1


@pytest.mark.slow  # about 100 s on the shared 2-core machine (two tunelab.train jobs)
def test_two_point_sweep_of_the_study_through_the_cli_and_the_report(tmp_path):
    """experiment=forgetting_cpt with its replay grid, shrunk: random-init tiny-llama-bytes,
    4 steps of 4 blocks of 16 bytes, 8 MC items per set, two ratios, one seed."""
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable, "-m", "tunelab.train", "-m",
        "experiment=forgetting_cpt", "hparams_search=forgetting_tiny_replay",
        "model.source=tiny-llama-bytes", "seed=1", "data.replay_ratio=0,0.5",
        "data.block_len=16", "data.batch_size=4", "data.train_batches=4", "data.val_blocks=4",
        "data.max_docs=40", "trainer.val_check_interval=2", "callbacks.choice_eval.limit=8",
        "callbacks.choice_eval.at_start=true", "extras.print_config=false",
        "~callbacks.progress_bar", "+trainer.enable_progress_bar=false",
        f"hydra.sweep.dir={sweep}",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    assert not list(sweep.rglob("*.ckpt"))  # the grids save no checkpoints
    out = tmp_path / "report"
    assert report.main([str(sweep), "--out", str(out)]) == 0
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["replay_ratio"]) for r in rows] == [0.0, 0.5]
    assert [int(r["old_blocks"]) for r in rows] == [0, 8]
    for r in rows:
        assert r["setting"] == "full lr=0.003" and r["seed"] == "1"
        assert int(r["steps"]) == 4 and int(float(r["train_tokens"])) == 4 * 4 * 16
        assert float(r["forgetting"]) == pytest.approx(
            float(r["old_loss"]) - float(r["old_loss@0"])
        )
        # at_start: each job's own step-0 accuracy is the MC baseline
        assert float(r["mc_forgetting"]) == pytest.approx(
            float(r["old_acc@0"]) - float(r["old_acc"])
        )
    # Every job starts from the same model and items: one step-0 accuracy.
    assert len({r["old_acc@0"] for r in rows}) == 1 and len({r["new_acc@0"] for r in rows}) == 1
    table = (out / "results.md").read_text()
    assert "**full lr=0.003** (mean ± 95% t-interval half-width over seeds)" in table
    assert "- full lr=0.003: loss forgetting at r = 0: fewer than 2 seeds" in table


def test_bytes_tokenizer_and_the_study_preset():
    from tunelab.models.api import load_pretrained
    from tunelab.models.tokenizer import Tokenizer, tokenizer_by_name

    tok = tokenizer_by_name("bytes")
    assert tok.vocab_size == 257 and (tok.eos_id, tok.pad_id, tok.stop_ids) == (256, 256, [256])
    text = "héllo <|endoftext|>\n\tx"
    assert tok.encode_plain(text) == list(text.encode("utf-8"))  # user text stays bytes
    assert tok.encode("a<|endoftext|>b") == [97, 256, 98]  # trusted text: the special token
    assert tok.decode(tok.encode(text)) == text
    again = Tokenizer.from_spec(json.loads(json.dumps(tok.to_spec())))
    assert again.name == "bytes" and again.encode(text) == tok.encode(text)
    loaded = load_pretrained("tiny-llama-bytes", seed=0)
    cfg = loaded.model.cfg
    assert (cfg.family, cfg.vocab_size, cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_kv_head) == (
        "llama",
        257,
        4,
        128,
        4,
        2,
    )
    assert sum(p.numel() for p in loaded.model.parameters()) == 820_480
    assert loaded.tokenizer.name == "bytes"


def test_prepared_study_data_is_up_to_date_and_disjoint():
    """prepare.py --check: the committed files are what it builds; no MC source document is in
    a training split."""
    import gzip

    import prepare

    from tunelab.data.builders.mc_cloze import held_out

    assert prepare.main(["--check"]) == 0
    data = ROOT / "experiments" / "forgetting_replay" / "data"
    for name in ("old_train", "new_train"):
        with gzip.open(data / f"{name}.jsonl.gz", "rt") as f:
            assert not any(held_out(json.loads(line)["source"]) for line in f)
    for name in ("mc_old_cloze", "mc_new_code"):
        items = [json.loads(line) for line in (data / f"{name}.jsonl").read_text().splitlines()]
        assert len(items) == 320
        for it in items:
            assert held_out(
                it["source"].rsplit(":", 1)[0] if name == "mc_new_code" else it["source"]
            )
            assert len(it["choices"]) == 4 and len(set(it["choices"])) == 4
