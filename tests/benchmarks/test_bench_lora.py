"""The LoRA and model-shape benchmarks' code paths on a tiny Llama shape (benchmarks/lora.py,
benchmarks/families.py, benchmarks/paired.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.common import write_json
from benchmarks.lora import LORA, headline
from benchmarks.paired import prepare, update_block


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    """tiny-llama written by tunelab's exporter; prepare() checks transformers' logits."""
    workdir = tmp_path_factory.mktemp("bench_lora")
    out = prepare("tiny-llama", 0, 1, workdir)
    assert out["weights_check"]["transformers"] < 1e-4
    # hand-made token ids (tokenising the embedded sets would take most of the test's time)
    sft = [[list(range(10, 40)), list(range(100, 120))], [list(range(7, 47)), [5, 6, 7, 8]]]
    write_json(workdir / "sft.json", {"batches": sft})
    pair = {"prompt": list(range(20, 30)), "chosen": [40, 41, 42], "rejected": [50, 51]}
    write_json(workdir / "dpo.json", {"batches": [[pair, pair], [pair, pair]]})
    spec = {k: v for k, v in out.items() if k not in ("tokenizer", "weights_check")}
    common = dict(warmup=1, steps=1, segments=1, batch_size=2, max_length=48, packing=True)
    return {
        "sft": {**spec, **common, "batches": str(workdir / "sft.json"), "lora": LORA},
        "dpo": {**spec, **common, "batches": str(workdir / "dpo.json"), "lora": LORA},
    }


# tiny-llama: width 64, 4 heads of 16 (2 kv heads: k/v are 32 wide), MLP 128, 2 layers; rank 16
# adapters: A is 16 x in, B is out x 16 on q, k, v, o, gate, up, down
_PER_LAYER = (
    16 * (64 + 64)  # q
    + 2 * 16 * (64 + 32)  # k, v
    + 16 * (64 + 64)  # o
    + 2 * 16 * (64 + 128)  # gate, up
    + 16 * (128 + 64)  # down
)


def _trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.slow  # ~30 s idle: three trainers and an exporter round trip
def test_lora_sft_contenders_train_the_same_adapters(base):
    from benchmarks.contenders import TrlSFT, TunelabSFT

    assert _PER_LAYER == 16384
    full = TunelabSFT({**base["sft"], "contender": "tunelab_sft"})
    assert _trainable(full.model) == sum(p.numel() for p in full.model.parameters())
    mine = TunelabSFT({**base["sft"], "contender": "tunelab_sft_lora", "malloc": "default"})
    trl = TrlSFT({**base["sft"], "contender": "trl_sft_lora"})
    assert _trainable(mine.model) == _trainable(trl.trainer.model) == 2 * _PER_LAYER
    assert mine.segment(0)["seconds"] > 0 and trl.segment(0)["seconds"] > 0
    # the like of TRL's default gradient checkpointing: the same adapters, recomputing
    again = TunelabSFT({**base["sft"], "contender": "tunelab_sft_lora_recompute"})
    assert trl.trainer.args.gradient_checkpointing and again.model.activation_checkpointing
    assert not mine.model.activation_checkpointing
    assert _trainable(again.model) == 2 * _PER_LAYER and again.segment(0)["seconds"] > 0


@pytest.mark.slow
def test_lora_dpo_contenders_use_the_adapter_free_reference(base):
    from benchmarks.dpo import TrlDPO, TunelabDPO

    mine = TunelabDPO({**base["dpo"], "contender": "tunelab_dpo_lora", "malloc": "default"})
    assert mine.task.reference == "adapters_off" and mine.precompute_s < 1.0
    trl = TrlDPO({**base["dpo"], "contender": "trl_dpo_lora"})
    assert trl.trainer.ref_model is None  # TRL: the PEFT model with its adapters disabled
    assert _trainable(mine.task.model) == _trainable(trl.trainer.model) == 2 * _PER_LAYER
    assert mine.segment(0)["seconds"] > 0 and trl.segment(0)["seconds"] > 0


def _st(median: float) -> dict:
    return {"median": median, "min": median, "max": median, "n": 1, "values": [median]}


def test_headline_takes_the_least_favourable_shape():
    section = {
        "a": {"sft": {"ratios": {"lora_vs_full": _st(1.2), "peak_rss_lora_vs_full": _st(0.4)}}},
        "b": {"sft": {"ratios": {"lora_vs_full": _st(1.1), "peak_rss_lora_vs_full": _st(0.45)}}},
        "stats": {},
    }
    values, stats = headline(section)
    assert values == {
        "lora_tokens_per_s_ratio_vs_full": 1.1,  # a ">=" target: the smaller median
        "lora_peak_rss_ratio_vs_full": 0.45,  # a "<=" target: the larger median
    }
    assert stats["lora_tokens_per_s_ratio_vs_full"]["shape"] == "b"


def test_update_block_replaces_only_its_block(tmp_path: Path):
    readme = tmp_path / "README.md"
    readme.write_text("# B\n\nintro\n<!-- bench:x:start -->\nold\n<!-- bench:x:end -->\ntail\n")
    update_block(readme, "x", "new")
    assert (
        readme.read_text()
        == "# B\n\nintro\n<!-- bench:x:start -->\nnew\n<!-- bench:x:end -->\ntail\n"
    )
    update_block(readme, "y", "other")
    assert readme.read_text().endswith("<!-- bench:y:start -->\nother\n<!-- bench:y:end -->\n")
