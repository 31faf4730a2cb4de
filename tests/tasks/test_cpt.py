"""CPT task: step-0 metrics, forgetting/adaptation, realised ratio, LR re-warming from a checkpoint."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import compose_train
from tunelab.callbacks.lr_schedule import lr_at
from tunelab.data.replay import ReplayDataModule
from tunelab.models import load_pretrained
from tunelab.tasks.cpt import forgetting_metrics
from tunelab.train import train


def test_forgetting_metrics_by_hand():
    base = {"old": 3.0, "new": 2.5}
    out = forgetting_metrics({"old": 3.25, "new": 2.0}, base)
    assert out == {"forgetting": 0.25, "adaptation": 0.5}
    assert forgetting_metrics({"new": 2.0}, base) == {"adaptation": 0.5}  # no old domain
    assert forgetting_metrics({"old": 3.0}, None) == {}


@pytest.fixture
def corpora(tmp_path) -> tuple[Path, Path]:
    """Small new (code-like) and old (prose) corpora in JSONL and plain-text form."""
    new = tmp_path / "new.jsonl"
    new.write_text(
        "".join(
            json.dumps({"text": f"def f{i}(x):\n    return x * {i} + {i % 7}\n"}) + "\n"
            for i in range(60)
        )
    )
    old = tmp_path / "old"
    old.mkdir()
    for i in range(6):
        (old / f"doc{i}.txt").write_text(
            " ".join(
                f"The river {i} flows past the old stone mill near town {j}." for j in range(8)
            )
        )
    return new, old


def cpt_overrides(new: Path, old: Path, *extra: str) -> list[str]:
    return [
        "task=cpt",
        "model=tiny-gpt2",
        "trainer=cpu",
        "data=text_files",
        f"data.new={new}",
        f"data.old=[{old}]",
        "data.replay_ratio=0.25",
        "data.block_len=16",
        "data.batch_size=4",
        "data.train_batches=6",
        "data.val_blocks=4",
        "optimizer.lr=3e-3",
        "trainer.val_check_interval=3",
        "trainer.log_every_n_steps=1",
        "+trainer.enable_progress_bar=false",
        "~callbacks.progress_bar",
        "~callbacks.responses",
        "optimized_metric=forgetting",
        *extra,
    ]


def read_csv(run: Path) -> list[dict[str, str]]:
    with open(run / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def reference_val_losses(new: Path, old: Path, seed: int = 123) -> dict[str, float]:
    """Token-weighted held-out losses of the untrained model, computed here independently."""
    loaded = load_pretrained("tiny-gpt2", seed=seed, dropout=0.0)
    dm = ReplayDataModule(
        new=str(new), old=[str(old)], replay_ratio=0.25, block_len=16, batch_size=4,
        train_batches=6, val_blocks=4, seed=seed,
    )  # fmt: skip
    dm.connect(loaded.tokenizer)
    dm.setup()
    out = {}
    with torch.no_grad():
        for name, ds in zip(("new", "old"), dm.val_sets, strict=True):
            blocks = ds.blocks
            logits = loaded.model.eval()(blocks[:, :-1])
            out[name] = float(
                F.cross_entropy(logits.reshape(-1, logits.shape[-1]), blocks[:, 1:].reshape(-1))
            )
    return out


def test_metrics_at_step_zero_and_at_every_validation(tmp_path, corpora):
    new, old = corpora
    run = tmp_path / "run"
    final = train(compose_train(cpt_overrides(new, old), run))
    metrics = json.loads((run / "metrics.json").read_text())
    ref = reference_val_losses(new, old)
    # Step-0 baselines are the untrained model's losses on the held-out blocks.
    assert metrics["val/old_loss@0"] == pytest.approx(ref["old"], rel=1e-5)
    assert metrics["val/new_loss@0"] == pytest.approx(ref["new"], rel=1e-5)
    assert final == metrics["forgetting"]
    assert metrics["forgetting"] == pytest.approx(
        metrics["val/old_loss"] - metrics["val/old_loss@0"]
    )
    assert metrics["adaptation"] == pytest.approx(
        metrics["val/new_loss@0"] - metrics["val/new_loss"]
    )
    assert metrics["adaptation"] > 0  # 6 steps at lr 3e-3 from random init learn the new text
    assert metrics["train/replay_ratio_realised"] == 0.25
    assert metrics["train/tokens_seen"] == 6 * 4 * 16
    assert metrics["global_step"] == 6
    rows = read_csv(run)
    vals = [r for r in rows if r.get("val/old_loss")]
    assert [int(r["step"]) for r in vals] == [0, 2, 5]  # before any update, after 3 and 6
    step0 = vals[0]
    assert float(step0["forgetting"]) == 0.0 and float(step0["adaptation"]) == 0.0
    assert float(step0["val/old_loss"]) == pytest.approx(ref["old"], rel=1e-5)
    for r in vals[1:]:
        assert float(r["forgetting"]) == pytest.approx(
            float(r["val/old_loss"]) - float(step0["val/old_loss"]), abs=1e-5
        )
    ratios = [
        float(r["train/replay_ratio_realised"])
        for r in rows
        if r.get("train/replay_ratio_realised")
    ]
    assert ratios == [0.25] * 6  # one old block in each batch of four


def lrs(run: Path) -> list[tuple[int, float]]:
    return [(int(r["step"]), float(r["train/lr"])) for r in read_csv(run) if r.get("train/lr")]


@pytest.fixture
def first_phase(tmp_path, corpora) -> Path:
    """A short CPT run at constant LR; its last.ckpt is the 'pretrained' starting point."""
    new, old = corpora
    run = tmp_path / "first"
    train(compose_train(cpt_overrides(new, old, "callbacks.lr_schedule.schedule=constant"), run))
    assert (run / "checkpoints" / "last.ckpt").exists()
    return run


SCHED = ["callbacks.lr_schedule.warmup=2", "callbacks.lr_schedule.min_lr=1e-4", "optimizer.lr=1e-3"]


def test_lr_rewarms_and_redecays_from_a_pretrained_checkpoint(tmp_path, corpora, first_phase):
    new, old = corpora
    # The first phase held its peak LR (constant schedule, the ablation option).
    assert [lr for _, lr in lrs(first_phase)] == pytest.approx([3e-3] * 6)
    end_of_first = json.loads((first_phase / "metrics.json").read_text())
    ckpt = first_phase / "checkpoints" / "last.ckpt"
    # A new CPT phase from the checkpoint: the LR warms up from 0 again and decays to min_lr.
    second = tmp_path / "second"
    train(compose_train(cpt_overrides(new, old, f"model.source={ckpt}", *SCHED), second))
    got = lrs(second)
    assert [s for s, _ in got] == list(range(6))
    expected = [lr_at(s, 6, 1e-3, 2, 0.0, 1e-4) for s in range(6)]
    assert [lr for _, lr in got] == pytest.approx(expected)
    assert got[0][1] == 0.0 and got[2][1] == pytest.approx(1e-3)
    # It really starts from the checkpoint: its step-0 losses are the first phase's final ones.
    start = json.loads((second / "metrics.json").read_text())
    assert start["val/new_loss@0"] == pytest.approx(end_of_first["val/new_loss"], rel=1e-5)
    assert start["val/old_loss@0"] == pytest.approx(end_of_first["val/old_loss"], rel=1e-5)


@pytest.mark.slow
def test_resumed_trainer_rewarms_at_restart_step_and_keeps_the_baseline(
    tmp_path, corpora, first_phase
):
    """ckpt_path resumes the trainer for a second epoch; restart_step=6 re-warms at step 6 and
    forgetting stays relative to the original step-0 losses saved in the checkpoint."""
    new, old = corpora
    end_of_first = json.loads((first_phase / "metrics.json").read_text())
    ckpt = first_phase / "checkpoints" / "last.ckpt"
    resumed = tmp_path / "resumed"
    overrides = cpt_overrides(
        new, old, f"ckpt_path={ckpt}", "trainer.max_epochs=2",
        "callbacks.lr_schedule.restart_step=6", *SCHED, "resume_policy=allow_changes",
    )  # fmt: skip
    train(compose_train(overrides, resumed))
    got = lrs(resumed)
    assert [s for s, _ in got] == list(range(6, 12))
    expected = [lr_at(s, 12, 1e-3, 2, 0.0, 1e-4, restart_step=6) for s in range(6, 12)]
    assert [lr for _, lr in got] == pytest.approx(expected)
    assert got[0][1] == 0.0 and got[2][1] == pytest.approx(1e-3)
    final = json.loads((resumed / "metrics.json").read_text())
    assert final["val/old_loss@0"] == pytest.approx(end_of_first["val/old_loss@0"])
    assert final["forgetting"] == pytest.approx(
        final["val/old_loss"] - end_of_first["val/old_loss@0"]
    )
    assert final["train/replay_ratio_realised"] == 0.25
