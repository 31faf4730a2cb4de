"""task=dpo: the concatenated forward, both reference modes, the cache, and short real fits."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import compose_train
from tunelab.data.preference import PreferenceDataModule, collate_pairs
from tunelab.data.sft import SFTDataModule
from tunelab.losses import dpo_loss, token_logprobs
from tunelab.models import load_pretrained
from tunelab.tasks.dpo import DPOTask, concatenated_logps
from tunelab.train import train

WORDS = ["apple", "river", "stone", "cloud", "maple", "ember", "frost", "tiger"]
QUIET = [
    "model=tiny-gpt2",
    "trainer=cpu",
    "task=dpo",
    "data=preferences_file",
    "data.path=null",
    "data.batch_size=4",
    "+trainer.enable_progress_bar=false",
    "~callbacks.progress_bar",
    "~callbacks.responses",
    "trainer.log_every_n_steps=1",
]


@pytest.fixture
def pref_file(tmp_path: Path) -> Path:
    """Eight pairs: the right word versus an evasive non-answer."""
    rows = [
        {"prompt": f"Say the word number {i}.", "chosen": w, "rejected": "I would rather not say."}
        for i, w in enumerate(WORDS)
    ]
    path = tmp_path / "prefs.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def tiny(seed: int = 0):
    return load_pretrained("tiny-gpt2", seed=seed)


def datamodule(path: Path, loaded, packing: bool = False) -> PreferenceDataModule:
    dm = PreferenceDataModule(
        train_path=str(path), val_path=str(path), batch_size=4, max_length=128, packing=packing
    )
    dm.connect(loaded.tokenizer, loaded.prompt_style)
    dm.setup()
    return dm


def make_task(loaded, **kwargs) -> DPOTask:
    return DPOTask(loaded.model, loaded.tokenizer, loaded.prompt_style, **kwargs)


def test_concatenated_forward_equals_separate_forwards(pref_file):
    loaded = tiny()
    dm = datamodule(pref_file, loaded)
    examples = dm.datasets["train"].examples[:4]
    batch = collate_pairs(examples, pad_id=loaded.tokenizer.pad_id)
    with torch.no_grad():
        logps, counts = concatenated_logps(loaded.model, batch)
        separate = []
        for completion in ("chosen", "rejected"):
            for ex in examples:
                ids = torch.tensor([ex.prompt + getattr(ex, completion)])
                targets = ids[:, 1:].clone()
                targets[:, : len(ex.prompt) - 1] = -100
                separate.append(token_logprobs(loaded.model(ids[:, :-1]), targets))
    assert torch.allclose(logps, torch.cat([s[0] for s in separate]), atol=1e-4)
    assert counts.tolist() == [len(ex.chosen) for ex in examples] + [
        len(ex.rejected) for ex in examples
    ]


def test_packed_batches_give_the_same_logps(pref_file):
    loaded = tiny()
    dm = datamodule(pref_file, loaded)
    examples = dm.datasets["train"].examples
    padded = collate_pairs(examples, pad_id=0)
    packed = collate_pairs(examples, pad_id=0, packing=True, pack_length=128)
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]  # fewer rows
    with torch.no_grad():
        a, ca = concatenated_logps(loaded.model, padded)
        b, cb = concatenated_logps(loaded.model, packed)
    assert torch.allclose(a, b, atol=1e-4) and torch.equal(ca, cb)


def test_reference_modes_agree_on_a_moved_policy(pref_file):
    """Precomputed and frozen reference log-probs give the same loss, also after training moved
    the policy away from the reference (not only the trivial step 0)."""
    results = []
    for mode in ("frozen", "precomputed"):
        loaded = tiny()
        dm = datamodule(pref_file, loaded)
        task = make_task(loaded, reference=mode, beta=0.5)
        if mode == "frozen":
            task.setup("fit")
            assert task.ref_model is not None and not task.ref_model.training
            assert all(not p.requires_grad for p in task.ref_model.parameters())
            assert not any(k.startswith("_ref") for k in task.state_dict())  # not checkpointed
        else:
            task.precompute_reference(dm)
            assert task.ref_model is None  # one model in memory
        batch = collate_pairs(dm.datasets["train"].examples[:4], pad_id=loaded.tokenizer.pad_id)
        with torch.no_grad():
            step0, _ = task.compute_loss(batch)
            for p in loaded.model.parameters():  # the same "update" in both modes
                p.add_(0.01 * torch.sin(torch.arange(p.numel(), dtype=p.dtype)).view_as(p))
            moved, metrics = task.compute_loss(batch)
        results.append((step0.item(), moved.item(), metrics["rewards/margins"].item()))
    (f0, f1, fm), (p0, p1, pm) = results
    assert f0 == pytest.approx(math.log(2), abs=1e-6) and p0 == pytest.approx(math.log(2), abs=1e-6)
    assert abs(f1 - math.log(2)) > 1e-3  # the policy really moved
    assert p1 == pytest.approx(f1, abs=1e-5) and pm == pytest.approx(fm, abs=1e-5)


def test_ipo_uses_average_logps(pref_file):
    loaded = tiny()
    dm = datamodule(pref_file, loaded)
    task = make_task(loaded, loss_type="ipo", beta=0.1, reference="frozen")
    assert task.average_logps
    task.setup("fit")
    batch = collate_pairs(dm.datasets["train"].examples[:4], pad_id=0)
    with torch.no_grad():
        for p in loaded.model.parameters():
            p.mul_(1.05)
        loss, _ = task.compute_loss(batch)
        logps, counts = concatenated_logps(loaded.model, batch)
        ref, _ = concatenated_logps(task.ref_model, batch)
    avg, ref_avg = logps / counts, ref / counts
    expected, _, _ = dpo_loss(*avg.chunk(2), *ref_avg.chunk(2), beta=0.1, loss_type="ipo")
    assert loss.item() == pytest.approx(expected.mean().item(), rel=1e-6)


def test_reference_cache_is_reused_and_stale_cache_rejected(pref_file, tmp_path, caplog):
    cache = tmp_path / "ref_logps.pt"
    loaded = tiny(seed=0)
    task = make_task(loaded, ref_cache=str(cache))
    dm = datamodule(pref_file, loaded)
    task.precompute_reference(dm)
    first = [ex.ref_logps for ex in dm.datasets["train"].examples]
    assert cache.exists()
    caplog.set_level("INFO", logger="tunelab.tasks.dpo")
    loaded2 = tiny(seed=0)  # the same weights: loaded from the cache
    dm2 = datamodule(pref_file, loaded2)
    make_task(loaded2, ref_cache=str(cache)).precompute_reference(dm2)
    assert "loaded from" in caplog.text and "computed for" not in caplog.text
    assert [ex.ref_logps for ex in dm2.datasets["train"].examples] == first
    caplog.clear()
    loaded3 = tiny(seed=1)  # other weights: the cache is stale and recomputed
    dm3 = datamodule(pref_file, loaded3)
    make_task(loaded3, ref_cache=str(cache)).precompute_reference(dm3)
    assert "stale" in caplog.text and "computed for 8 pairs" in caplog.text
    assert [ex.ref_logps for ex in dm3.datasets["train"].examples] != first


def test_bad_settings_are_named(toy_file):
    loaded = tiny()
    with pytest.raises(ValueError, match="task.reference"):
        make_task(loaded, reference="lazy")
    with pytest.raises(ValueError, match="task.loss_type"):
        make_task(loaded, loss_type="kto")
    sft = SFTDataModule(path=str(toy_file))
    with pytest.raises(TypeError, match="task=dpo needs preference data"):
        make_task(loaded).precompute_reference(sft)


def step0_loss(out: Path) -> float:
    with open(out / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss_step")]
    return float(next(r for r in rows if r["step"] == "0")["train/loss_step"])


def test_both_reference_modes_give_the_same_step0_loss_end_to_end(pref_file, tmp_path):
    losses = {}
    for mode, packing in (("frozen", False), ("precomputed", False), ("precomputed", True)):
        out = tmp_path / f"{mode}-{packing}"
        cfg = compose_train(
            [
                *QUIET,
                f"data.train_path={pref_file}",
                f"data.val_path={pref_file}",
                f"data.packing={packing}",
                f"task.reference={mode}",
                "trainer.max_steps=2",
                "callbacks.lr_schedule.schedule=constant",
                "optimizer.lr=1e-3",
            ],
            out,
        )
        train(cfg)
        losses[mode, packing] = step0_loss(out)
        assert (out / "ref_logps.pt").exists() == (mode == "precomputed")
        state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        assert all(k.startswith("model.") for k in state)  # no reference weights saved
    # The same weights as policy and reference: exactly log 2 (sigmoid at h = 0) in both modes,
    # with padded or packed rows.
    assert losses["frozen", False] == pytest.approx(math.log(2), abs=1e-6)
    for key in (("precomputed", False), ("precomputed", True)):
        assert losses[key] == pytest.approx(losses["frozen", False], abs=1e-6)


def test_short_fit_raises_reward_accuracy(pref_file, tmp_path):
    cfg = compose_train(
        [
            *QUIET,
            f"data.train_path={pref_file}",
            f"data.val_path={pref_file}",
            "optimizer.lr=3e-3",
            "optimizer.weight_decay=0.0",
            "callbacks.lr_schedule.schedule=constant",
            "trainer.max_epochs=6",
            "trainer.check_val_every_n_epoch=6",
            "callbacks.model_checkpoint=null",
            "optimized_metric=val/rewards/accuracies",
        ],
        tmp_path,
    )
    accuracy = train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert accuracy >= 0.75, metrics
    assert metrics["val/rewards/margins"] > 0 and metrics["val/loss"] < math.log(2)
    for key in ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"):
        assert f"val/{key}" in metrics and f"train/{key}" in metrics
