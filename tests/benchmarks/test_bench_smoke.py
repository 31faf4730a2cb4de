"""Smoke tests of the benchmark code paths on tiny shapes (peers skipped when not installed)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from benchmarks.common import (
    effective_tokens,
    make_tunelab_model,
    matmul_params,
    max_logit_diffs,
    ratio_stats,
    training_flops,
    write_json,
)
from tunelab.models.config import Config

ROOT = Path(__file__).resolve().parents[2]


def test_flop_count_by_hand():
    cfg = Config.from_preset("tiny-gpt2")  # 2 layers, width 64, MLP 256, vocab 50257
    per_layer = 64 * 192 + 64 * 64 + 2 * 64 * 256  # qkv + proj + fc + proj
    assert matmul_params(cfg) == 2 * per_layer + 50257 * 64
    # two examples of 3 and 5 tokens: 6 N per token + 12 * layers * width * l^2 per example
    n = matmul_params(cfg)
    assert training_flops(cfg, [3, 5]) == 6 * n * 8 + 12 * 2 * 64 * (9 + 25)


def test_ratio_stats_and_effective_tokens():
    assert ratio_stats([2.0, 1.0, 4.0]) == {
        "median": 2.0,
        "min": 1.0,
        "max": 4.0,
        "n": 3,
        "values": [2.0, 1.0, 4.0],
    }
    assert effective_tokens([[1, 2, 3], [4]]) == 4


def test_seed_and_transformers_compute_the_same_function(tmp_path):
    pytest.importorskip("llms_from_scratch")
    from benchmarks.common import build_seed_model

    model = make_tunelab_model("tiny-gpt2", 0)
    peers = {
        "seed_model": build_seed_model(model.state_dict(), model.cfg),
    }
    if pytest.importorskip("transformers"):
        from benchmarks.common import build_hf_model
        from tunelab.models.loaders.hf import save_hf_gpt2

        save_hf_gpt2(model, tmp_path / "hf")
        peers["hf_model"] = build_hf_model(tmp_path / "hf")
    diffs = max_logit_diffs(model, **peers)
    assert set(diffs) == {"seed", "transformers"}
    assert max(diffs.values()) < 1e-4


def _spec(tmp_path: Path, **extra) -> dict:
    model = make_tunelab_model("tiny-gpt2", 0)
    with torch.no_grad():  # larger weights: greedy continuations that vary
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(8)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    write_json(tmp_path / "config.json", model.cfg.to_dict())
    return {
        "config": str(tmp_path / "config.json"),
        "weights": str(tmp_path / "weights.pt"),
        "seed": 0,
        **extra,
    }


def test_generation_contenders_agree_token_for_token(tmp_path):
    pytest.importorskip("llms_from_scratch")
    from benchmarks.contenders import SeedGen, SeedKVGen, TunelabGen

    spec = _spec(tmp_path, prompt=[464, 2068, 7586, 21831], new_tokens=12)
    outs = {cls.__name__: cls(spec).segment(0) for cls in (TunelabGen, SeedGen, SeedKVGen)}
    tokens = {name: out["tokens"] for name, out in outs.items()}
    assert tokens["SeedGen"] == tokens["TunelabGen"] == tokens["SeedKVGen"]
    assert len(set(tokens["TunelabGen"])) > 1
    assert all(out["seconds"] > 0 for out in outs.values())


def _sft_spec(tmp_path: Path) -> dict:
    g = torch.Generator().manual_seed(0)
    batches = [
        [torch.randint(0, 5000, (int(n),), generator=g).tolist() for n in (5, 9, 3)]
        for _ in range(2)
    ]
    write_json(tmp_path / "batches.json", {"batches": batches})
    return _spec(
        tmp_path,
        batches=str(tmp_path / "batches.json"),
        warmup=1,
        steps=1,
        segments=1,
        batch_size=3,
        max_length=32,
        packing=True,
    )


def test_tunelab_sft_lightning_and_plain_segments(tmp_path):
    from benchmarks.contenders import TunelabSFT

    contender = TunelabSFT(_sft_spec(tmp_path))
    for mode in ("lightning", "plain"):
        out = contender.segment(0, mode=mode)
        assert len(out["step_ends"]) == 2  # warmup + one timed step
        assert out["seconds"] == out["step_ends"][1] - out["step_ends"][0] > 0


def test_seed_sft_segment(tmp_path):
    pytest.importorskip("llms_from_scratch")
    from benchmarks.contenders import SeedSFT

    out = SeedSFT(_sft_spec(tmp_path)).segment(0)
    assert len(out["step_ends"]) == 2 and out["seconds"] > 0


def test_trl_sft_segment(tmp_path):
    pytest.importorskip("trl")
    from benchmarks.contenders import TrlSFT
    from tunelab.models.loaders.hf import save_hf_gpt2

    spec = _sft_spec(tmp_path)
    save_hf_gpt2(make_tunelab_model("tiny-gpt2", 0), tmp_path / "hf")
    spec["hf_dir"] = str(tmp_path / "hf")
    out = TrlSFT(spec).segment(0)
    assert len(out["step_ends"]) == 2 and out["seconds"] > 0


def _dpo_spec(tmp_path: Path) -> dict:
    from benchmarks.dpo import dpo_batches

    batches = dpo_batches(2, 64, 0)[:2]
    write_json(
        tmp_path / "pairs.json",
        {
            "batches": [
                [{"prompt": e.prompt, "chosen": e.chosen, "rejected": e.rejected} for e in b]
                for b in batches
            ]
        },
    )
    return _spec(
        tmp_path,
        batches=str(tmp_path / "pairs.json"),
        warmup=1,
        steps=1,
        segments=1,
        batch_size=2,
        max_length=64,
        packing=True,
    )


def test_dpo_contenders_run_a_segment(tmp_path):
    from benchmarks.dpo import TunelabDPO

    spec = _dpo_spec(tmp_path)
    out = TunelabDPO(spec).segment(0)
    assert out["seconds"] > 0 and out["precomputed_pairs"] == 4  # 2 batches of 2 pairs
    # the low-memory settings (malloc policy left alone: this is the test process)
    lowmem = TunelabDPO({**spec, "contender": "tunelab_dpo_lowmem", "malloc": "default"})
    assert lowmem.task.model.activation_checkpointing
    assert lowmem.segment(0)["seconds"] > 0
    if importlib.util.find_spec("trl") is None:
        return
    from benchmarks.dpo import TrlDPO
    from tunelab.models.loaders.hf import save_hf_gpt2

    save_hf_gpt2(make_tunelab_model("tiny-gpt2", 0), tmp_path / "hf")
    for name in ("trl_dpo", "trl_dpo_precomputed", "trl_dpo_lowmem"):
        trl_spec = {**spec, "hf_dir": str(tmp_path / "hf"), "contender": name}
        assert TrlDPO(trl_spec).segment(0)["seconds"] > 0


@pytest.mark.slow  # ~20 s: the GPU script's CPU smoke run (the GPU figures are not in CI)
def test_gpu_script_runs_on_cpu_with_a_tiny_preset(tmp_path):
    from benchmarks.gpu_sft import main

    out = tmp_path / "gpu.json"
    main(
        [
            "--preset",
            "tiny-gpt2",
            "--device",
            "cpu",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--batch-sizes",
            "4",
            "--max-length",
            "128",
            "--loops",
            "lightning,plain",
            "--out",
            str(out),
        ]
    )
    res = json.loads(out.read_text())
    assert res["device_type"] == "cpu" and res["precision"] == "bf16-mixed"
    assert [r["loop"] for r in res["runs"]] == ["lightning", "plain"]
    for run in res["runs"]:
        assert run["batch_size"] == 4 and run["steps"] == 2 and len(run["step_ms_each"]) == 2
        assert run["tokens_per_s"] > 0 and run["mfu_vs_measured_gemm"] > 0
        assert 0 <= run["padding_fraction"] < 0.5


@pytest.mark.slow
def test_full_benchmark_end_to_end_on_tiny_shapes(tmp_path):
    """The driver with worker processes, every figure, README table and results.json."""
    pytest.importorskip("llms_from_scratch")
    pytest.importorskip("trl")
    from benchmarks.run import TARGETS, main

    readme = tmp_path / "README.md"
    readme.write_text("# B\n\nkept\n")
    res = main(
        [
            "--preset",
            "tiny-gpt2",
            "--repeats",
            "2",
            "--steps",
            "1",
            "--new-tokens",
            "4",
            "--gen-repeats",
            "2",
            "--out",
            str(tmp_path / "results.json"),
            "--readme",
            str(readme),
            "--workdir",
            str(tmp_path / "work"),
        ]
    )
    saved = json.loads((tmp_path / "results.json").read_text())
    for key in TARGETS:
        assert isinstance(saved[key], float), key
        assert saved["summary"]["stats"][key]["n"] >= 1
    assert res["weights_check"]["max_abs_logit_diff"]["seed"] < 1e-4
    text = readme.read_text()
    assert text.startswith("# B\n\nkept\n") and "sft_tokens_per_s_ratio_vs_seed" in text
