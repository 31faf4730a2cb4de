"""LoRA through `tunelab.train`: SFT learns with adapter-only checkpoints that load, resume exactly
and merge; CPT with packing-free blocks and activation checkpointing; DPO's adapters-off reference."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import httpx
import pytest
import torch

from tests.conftest import compose_train, quick_sft_overrides
from tests.tasks.test_cpt import corpora, cpt_overrides  # noqa: F401  (fixture)
from tests.tasks.test_dpo import datamodule, make_task, pref_file  # noqa: F401  (fixture)
from tunelab.models import load_model, load_pretrained
from tunelab.models.generation import generate
from tunelab.models.loaders.checkpoint import read_checkpoint
from tunelab.models.lora import has_lora, is_lora_key, lora_modules
from tunelab.models.lora_io import PEFT_CONFIG, PEFT_WEIGHTS
from tunelab.train import train

LORA = ["lora=default", "model.lora.rank=4", "model.lora.alpha=8"]


def sft_overrides(toy_file: Path, *extra: str) -> list[str]:
    return quick_sft_overrides(
        toy_file,
        *LORA,
        "data.batch_size=2",
        "trainer.max_epochs=2",  # 4 steps an epoch
        "optimizer.lr=1e-2",
        "callbacks.lr_schedule.total_steps=6",
        "callbacks.periodic_checkpoint.every_n_steps=3",
        "optimized_metric=null",
        *extra,
    )


def val_losses(run: Path) -> list[float]:
    with open(run / "csv" / "metrics.csv") as f:
        return [float(r["val/loss"]) for r in csv.DictReader(f) if r.get("val/loss")]


def test_lora_sft_learns_and_writes_a_loadable_adapter_checkpoint(tmp_path, toy_file):
    run = tmp_path / "run"
    cfg = compose_train(
        [
            *sft_overrides(toy_file, "trainer.max_epochs=2", "callbacks.lr_schedule.total_steps=8"),
            f"data.train_path={toy_file}",
            f"data.val_path={toy_file}",
            "++trainer.limit_val_batches=1.0",
            "data.path=null",
        ],
        run,
    )
    train(cfg)
    losses = val_losses(run)
    assert len(losses) == 2 and losses[1] < losses[0]
    ckpt = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ckpt["state_dict"] and all(is_lora_key(k) for k in ckpt["state_dict"])
    lora = ckpt["tunelab"]["lora"]
    assert lora["config"] == {"rank": 4, "alpha": 8.0, "dropout": 0.0, "targets": ["all-linear"]}
    assert lora["base"]["source"] == "tiny-gpt2" and len(lora["base"]["sha256"]) == 64
    # the optimizer holds the adapters only: 2 blocks x (3 qkv + 3 other) x (A, B)
    assert len(ckpt["optimizer_states"][0]["state"]) == 2 * 6 * 2
    n_saved = sum(v.numel() for v in ckpt["state_dict"].values())
    base = load_pretrained("tiny-gpt2", seed=123).model
    assert n_saved < base.num_parameters / 10

    model, _ = load_model(str(run))  # base (from its source, hash checked) + adapters
    assert has_lora(model)
    for k, v in ckpt["state_dict"].items():
        assert torch.equal(model.state_dict()[k.removeprefix("model.")], v)
    x = torch.randint(0, 2000, (1, 9))
    with torch.no_grad():
        assert (model(x) - base(x)).abs().max() > 1e-3  # trained adapters
    peft_dir = run / "checkpoints" / "peft_adapter"
    assert (peft_dir / PEFT_WEIGHTS).is_file()
    assert json.loads((peft_dir / PEFT_CONFIG).read_text())["base_model_name_or_path"] == (
        "tiny-gpt2"
    )


def test_lora_resume_continues_exactly(tmp_path, toy_file):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    train(compose_train(sft_overrides(toy_file, "trainer.max_steps=6"), whole))
    train(compose_train(sft_overrides(toy_file, "trainer.max_steps=3"), cut))
    assert read_checkpoint(cut / "checkpoints" / "last.ckpt")["global_step"] == 3
    train(compose_train(sft_overrides(toy_file, "trainer.max_steps=6", "ckpt_path=last"), cut))
    a = read_checkpoint(whole / "checkpoints" / "last.ckpt")
    b = read_checkpoint(cut / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 6
    assert set(a["state_dict"]) == set(b["state_dict"])
    for k in a["state_dict"]:
        assert torch.allclose(a["state_dict"][k], b["state_dict"][k], atol=1e-6), k
    # another base or another LoRA config is refused, not silently mixed
    with pytest.raises(ValueError, match=r"cannot resume: lora\.config\.rank: checkpoint 4, now 2"):
        train(
            compose_train(
                sft_overrides(
                    toy_file, "trainer.max_steps=7", "ckpt_path=last", "model.lora.rank=2"
                ),
                cut,
            )
        )
    with pytest.raises(
        ValueError,
        match=r"cannot resume: lora\.base\.seed: checkpoint 123, now 7; lora\.base\.sha256",
    ):
        train(
            compose_train(
                sft_overrides(toy_file, "trainer.max_steps=7", "ckpt_path=last", "seed=7"), cut
            )
        )


def test_merged_lora_model_equals_unmerged_and_generates(tmp_path, toy_file, capsys):
    from tunelab.lora import main as lora_cli

    run = tmp_path / "run"
    train(compose_train(sft_overrides(toy_file, "trainer.max_steps=4"), run))
    merged_path = tmp_path / "merged.ckpt"
    assert lora_cli(["merge", str(run), str(merged_path)]) == 0
    assert lora_cli(["peft", str(run), str(tmp_path / "peft")]) == 0
    assert (tmp_path / "peft" / PEFT_WEIGHTS).is_file()
    lora_model, tok = load_model(str(run))
    merged, tok2 = load_model(str(merged_path))
    assert not has_lora(merged) and tok2.to_spec() == tok.to_spec()
    assert not read_checkpoint(merged_path)["tunelab"].get("lora")
    x = torch.tensor([tok.encode("Say the word number 3.")])
    with torch.no_grad():
        assert (merged(x) - lora_model(x)).abs().max() < 1e-5
    prompt = x[0].tolist()
    a = generate(merged, [prompt], max_new_tokens=6)
    assert a == generate(lora_model, [prompt], max_new_tokens=6) and len(a[0]) == 6
    # the command-line tools take the LoRA run (through load_model) and the merged checkpoint
    from tunelab.generate import main as generate_cli

    answers = []
    for source in (run, merged_path):
        capsys.readouterr()
        assert (
            generate_cli([f"model={source}", "prompt=Say the word number 3.", "max_new_tokens=5"])
            == 0
        )
        answers.append(capsys.readouterr().out)
    assert answers[0] == answers[1] and answers[0].startswith(">>> Say the word number 3.")
    # and `tunelab.serve` answers with the merged model exactly as with base + adapters
    from tunelab.serve import BackgroundServer, ServeSettings, create_app

    replies = []
    for source in (run, merged_path):
        app = create_app(load_pretrained(str(source)), ServeSettings(max_new_tokens=5))
        with BackgroundServer(app) as server:
            body = {"messages": [{"role": "user", "content": "Say the word number 3."}]}
            resp = httpx.post(f"{server.url}/api/chat", json={**body, "stream": False}, timeout=60)
        assert resp.status_code == 200, resp.text
        replies.append(resp.json()["message"]["content"])
    assert replies[0] == replies[1] and replies[0]


def test_lora_cpt_with_activation_checkpointing_trains_only_adapters(tmp_path, corpora):  # noqa: F811
    new, old = corpora
    run = tmp_path / "cpt"
    train(
        compose_train(
            cpt_overrides(
                new,
                old,
                *LORA,
                "task.activation_checkpointing=true",
                "trainer.max_steps=3",
                "optimized_metric=null",
            ),
            run,
        )
    )
    ckpt = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert all(is_lora_key(k) for k in ckpt["state_dict"])
    assert ckpt["tunelab"]["cpt_baseline"] is not None
    model, _ = load_model(str(run))
    base = load_pretrained("tiny-gpt2", seed=123).model
    for k, v in base.state_dict().items():  # the base never moved
        assert torch.equal(model.state_dict()[k], v), k


def test_dpo_adapters_off_reference_equals_a_frozen_copy_at_every_step(pref_file):  # noqa: F811
    lora = {"rank": 4, "alpha": 8.0, "targets": ["all-linear"]}
    loaded = load_pretrained("tiny-gpt2", seed=0, lora=lora)
    dm = datamodule(pref_file, loaded, packing=True)
    batch = next(iter(dm.train_dataloader()))
    tasks = {}
    for mode in ("frozen", "adapters_off"):
        twin = copy.deepcopy(loaded)
        task = make_task(twin, reference=mode, chunked_lm_loss=True)
        task.setup("fit")
        params = [p for p in twin.model.parameters() if p.requires_grad]
        tasks[mode] = (task, torch.optim.AdamW(params, lr=1e-2))
    assert tasks["adapters_off"][0].ref_model is None  # no second copy
    for step in range(4):
        losses = {}
        for mode, (task, opt) in tasks.items():
            task.model.train()
            loss, _ = task.compute_loss(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses[mode] = float(loss)
        if step == 0:
            assert losses["frozen"] == pytest.approx(0.6931471805599453, abs=1e-6)  # log 2
        assert losses["adapters_off"] == pytest.approx(losses["frozen"], abs=1e-6)
    assert losses["frozen"] < 0.6  # and the policy moved away from the reference


def test_adapters_off_reference_needs_lora(pref_file):  # noqa: F811
    loaded = load_pretrained("tiny-gpt2", seed=0)
    with pytest.raises(ValueError, match="reference=adapters_off needs a LoRA model"):
        make_task(loaded, reference="adapters_off")


def test_dpo_lora_run_end_to_end(tmp_path, pref_file):  # noqa: F811
    from tests.tasks.test_dpo import QUIET

    run = tmp_path / "dpo"
    cfg = compose_train(
        [
            *QUIET,
            *LORA,
            f"data.train_path={pref_file}",
            f"data.val_path={pref_file}",
            "task.reference=adapters_off",
            "trainer.max_steps=2",
            "optimized_metric=null",
        ],
        run,
    )
    train(cfg)
    assert not (run / "ref_logps.pt").exists()
    ckpt = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ckpt["state_dict"] and all(is_lora_key(k) for k in ckpt["state_dict"])
    model, _ = load_model(str(run / "checkpoints" / "last.ckpt"))
    assert len(list(lora_modules(model))) == 2 * 4


@pytest.mark.slow
def test_lora_run_cut_by_sigterm_resumes_exactly(tmp_path, toy_file):
    """As tests/test_reliability.py: a LoRA run killed by SIGTERM after a saved step, resumed
    with ckpt_path=last, ends with the adapters of an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    def args(run: Path) -> list[str]:
        return [
            *sft_overrides(
                toy_file, "trainer.max_epochs=3", "callbacks.lr_schedule.total_steps=12"
            ),
            "callbacks.periodic_checkpoint.every_n_steps=2",
            "extras.print_config=false",
            f"hydra.run.dir={run}",
        ]

    def start(extra: list[str]) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "tunelab.train", *extra],
            cwd=ROOT,
            env={**os.environ, "WANDB_MODE": "offline"},
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "stderr.log").open("a"),  # a pipe could fill up and block
        )

    def step(path: Path) -> int:
        return read_checkpoint(path)["global_step"] if path.exists() else -1

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    proc = start(args(whole))
    assert proc.wait(timeout=600) == 0, (tmp_path / "stderr.log").read_text()[-3000:]
    proc = start(args(cut))
    last = cut / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while step(last) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=300)
    assert 2 <= step(last) < 12
    proc = start([*args(cut), "ckpt_path=last"])
    assert proc.wait(timeout=600) == 0, (tmp_path / "stderr.log").read_text()[-3000:]
    a = read_checkpoint(whole / "checkpoints" / "last.ckpt")
    b = read_checkpoint(last)
    assert a["global_step"] == b["global_step"] == 12
    assert all(is_lora_key(k) for k in b["state_dict"])
    for k, v in a["state_dict"].items():
        assert torch.allclose(v, b["state_dict"][k], atol=1e-5), k


@pytest.mark.slow
def test_lora_ddp_two_processes_match_one_process(tmp_path, toy_file):
    """DDP over two CPU processes trains the same adapters as one process on the whole batch
    (SGD: Adam would turn last-bit differences into +-lr steps); the base stays frozen."""
    from tests.test_sweeps import fast_overrides, run_train

    common = [
        *fast_overrides(toy_file),
        *LORA,
        "~callbacks.responses",
        "data.shuffle=false",
        "data.split=[1.0,0.0,0.0]",
        "optimizer=sgd",
        "optimizer.lr=0.5",
        "trainer.max_epochs=2",
    ]
    one, two = tmp_path / "one", tmp_path / "two"
    run_train([*common, "data.batch_size=4", f"hydra.run.dir={one}"], tmp_path)
    run_train([*common, "trainer=ddp", "data.batch_size=2", f"hydra.run.dir={two}"], tmp_path)
    m1 = json.loads((one / "metrics.json").read_text())
    m2 = json.loads((two / "metrics.json").read_text())
    assert m1["global_step"] == m2["global_step"] == 4
    assert m2["train/loss_epoch"] == pytest.approx(m1["train/loss_epoch"], rel=1e-4)
    w1 = read_checkpoint(one / "checkpoints" / "last.ckpt")["state_dict"]
    w2 = read_checkpoint(two / "checkpoints" / "last.ckpt")["state_dict"]
    assert set(w1) == set(w2) and all(is_lora_key(k) for k in w1)  # adapters only
    assert any(float(w1[k].abs().max()) > 0 for k in w1 if "lora_b" in k)  # they trained
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-5
