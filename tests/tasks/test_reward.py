"""task=reward: the last-token reading, parity of training and scoring paths, margins, a short
fit whose checkpoint loads back as a reward model, and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import compose_train
from tunelab.data.preference import PreferenceDataModule, collate_pairs
from tunelab.losses import bradley_terry_loss
from tunelab.models import load_pretrained
from tunelab.tasks.reward import RewardModel, RewardTask, last_token_inputs, load_reward_model
from tunelab.train import train

WORDS = ["apple", "river", "stone", "cloud", "maple", "ember", "frost", "tiger"]


@pytest.fixture
def pref_file(tmp_path: Path) -> Path:
    rows = [
        {
            "prompt": f"Say the word number {i}.",
            "chosen": w,
            "rejected": "I would rather not say.",
            "margin": 0.25 * i,
        }
        for i, w in enumerate(WORDS)
    ]
    path = tmp_path / "prefs.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def _setup(path: Path, packing: bool = False):
    loaded = load_pretrained("tiny-gpt2", seed=0)
    dm = PreferenceDataModule(
        train_path=str(path), val_path=str(path), batch_size=4, max_length=128, packing=packing
    )
    dm.connect(loaded.tokenizer, loaded.prompt_style)
    dm.setup()
    task = RewardTask(loaded.model, loaded.tokenizer, loaded.prompt_style)
    return loaded, dm, task


def test_last_token_rows_are_the_full_sequences(pref_file):
    loaded, dm, _ = _setup(pref_file)
    examples = dm.datasets["train"].examples[:3]
    batch = collate_pairs(examples, loaded.tokenizer.pad_id)
    full, last = last_token_inputs(batch, loaded.tokenizer.pad_id)
    seqs = [ex.prompt + ex.chosen for ex in examples] + [ex.prompt + ex.rejected for ex in examples]
    for r, seq in enumerate(seqs):
        assert full[r, : len(seq)].tolist() == seq
        assert int(last[r]) == len(seq) - 1 and seq[-1] == loaded.tokenizer.eos_id


def test_training_rewards_equal_scoring_rewards_and_margins_are_used(pref_file):
    loaded, dm, task = _setup(pref_file)
    task.margins = {"train": task._margins(dm.datasets["train"])}
    assert task.margins["train"].tolist() == [0.25 * i for i in range(8)]
    examples = dm.datasets["train"].examples[:4]
    batch = collate_pairs(examples, loaded.tokenizer.pad_id)
    task.eval()
    with torch.no_grad():
        loss, metrics = task.compute_loss(batch, "train")
    seqs = [ex.prompt + ex.chosen for ex in examples] + [ex.prompt + ex.rejected for ex in examples]
    scored = torch.tensor(
        RewardModel(task.model, task.head).score(seqs, loaded.tokenizer.pad_id, 3)
    )
    chosen, rejected = scored.chunk(2)
    margin = task.margins["train"][batch["index"]]
    assert loss.item() == pytest.approx(
        bradley_terry_loss(chosen, rejected, margin).mean().item(), abs=1e-5
    )
    assert metrics["accuracy"].item() == (chosen > rejected).float().mean().item()
    assert metrics["margin"].item() == pytest.approx((chosen - rejected).mean().item(), abs=1e-5)


def test_margins_all_or_none(tmp_path, pref_file):
    rows = json.loads(pref_file.read_text())
    del rows[3]["margin"]
    pref_file.write_text(json.dumps(rows))
    _, dm, task = _setup(pref_file)
    with pytest.raises(ValueError, match="record 3 of a split has no 'margin'"):
        task._margins(dm.datasets["train"])


def test_packing_is_refused(pref_file):
    loaded, dm, _ = _setup(pref_file, packing=True)
    batch = collate_pairs(dm.datasets["train"].examples[:2], loaded.tokenizer.pad_id, True, 128)
    with pytest.raises(ValueError, match="set data.packing=false"):
        last_token_inputs(batch, loaded.tokenizer.pad_id)


def test_short_fit_logs_accuracy_and_checkpoint_loads_as_reward_model(tmp_path, pref_file):
    cfg = compose_train(
        [
            "model=tiny-gpt2",
            "trainer=cpu",
            "task=reward",
            "data=preferences_file",
            f"data.path={pref_file}",
            "data.split=[0.5,0.5,0.0]",
            "data.batch_size=2",
            "trainer.max_epochs=1",
            "+trainer.enable_progress_bar=false",
            "~callbacks.progress_bar",
            "~callbacks.responses",
            "optimized_metric=val/accuracy",
        ],
        tmp_path,
    )
    acc = train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert acc == metrics["val/accuracy"] and 0.0 <= acc <= 1.0
    assert {"val/margin", "train/accuracy_epoch", "train/loss_epoch"} <= set(metrics)
    rm, tok, _ = load_reward_model(str(tmp_path / "checkpoints" / "last.ckpt"))
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert torch.equal(rm.head.weight, ckpt["state_dict"]["head.weight"])
    with pytest.raises(ValueError, match="not a reward model checkpoint"):
        other = tmp_path / "plain.ckpt"
        del ckpt["state_dict"]["head.weight"]
        torch.save(ckpt, other)
        load_reward_model(str(other))
