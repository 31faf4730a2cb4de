"""Peak memory of loading a 1B-shaped bf16 folder: the weights once, not twice (slow).

A Llama-3.2-1B-shaped folder (16 layers, width 2048, 32/8 heads, vocabulary 128,256, tied
embeddings, llama3 RoPE scaling) of random bf16 weights in four shards is loaded in a fresh process
into bf16 and into fp32; its peak RSS (torch and tunelab imports included) must stay within 1.3x
the weights' size in the target dtype. `python tests/models/test_families_memory.py` prints the
figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

LLAMA_1B = dict(
    model_type="llama",
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    rope_scaling=dict(
        factor=32.0,
        high_freq_factor=4.0,
        low_freq_factor=1.0,
        original_max_position_embeddings=8192,
        rope_type="llama3",
    ),
    tie_word_embeddings=True,
    torch_dtype="bfloat16",
)

MEASURE = """
import json, resource, sys, torch
from tunelab.models.loaders.hf import load_hf_folder
import tunelab.models.loaders.hf_weights
dtype = getattr(torch, sys.argv[2])
model = load_hf_folder(sys.argv[1], dtype=dtype)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
weights = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"dtype": sys.argv[2], "weights_gb": weights / 1e9, "peak_rss_gb": peak / 1e9,
                  "ratio": peak / weights, "parameters": model.num_parameters}))
"""


def write_folder(path: Path, cfg: dict = LLAMA_1B, shards: int = 4) -> Path:
    """Random bf16 weights in `shards` safetensors files plus model.safetensors.index.json."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    d, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd, nq, nkv = cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    n_layer = cfg["num_hidden_layers"]
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)

    weight_map = {}
    per = -(-n_layer // shards)
    for s in range(shards):
        state = {}
        if s == 0:
            state["model.embed_tokens.weight"] = rand(v, d)
        if s == shards - 1:
            state["model.norm.weight"] = torch.ones(d, dtype=torch.bfloat16)
        for i in range(s * per, min(n_layer, (s + 1) * per)):
            p = f"model.layers.{i}."
            state |= {
                p + "input_layernorm.weight": torch.ones(d, dtype=torch.bfloat16),
                p + "post_attention_layernorm.weight": torch.ones(d, dtype=torch.bfloat16),
                p + "self_attn.q_proj.weight": rand(nq * hd, d),
                p + "self_attn.k_proj.weight": rand(nkv * hd, d),
                p + "self_attn.v_proj.weight": rand(nkv * hd, d),
                p + "self_attn.o_proj.weight": rand(d, nq * hd),
                p + "mlp.gate_proj.weight": rand(f, d),
                p + "mlp.up_proj.weight": rand(f, d),
                p + "mlp.down_proj.weight": rand(d, f),
            }
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file(state, str(path / name), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(state, name)
        del state
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}), encoding="utf-8"
    )
    (path / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    return path


def measure(path: Path, dtype: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path), dtype],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_loading_a_1b_bf16_folder_peaks_below_1_3x_the_weights(tmp_path):
    folder = write_folder(tmp_path / "llama-1b")
    for dtype in ("bfloat16", "float32"):
        result = measure(folder, dtype)
        assert result["parameters"] == 1_235_814_400
        assert result["ratio"] <= 1.3, result


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_folder(Path(tmp) / "llama-1b")
        for dtype in ("bfloat16", "float32"):
            print(json.dumps(measure(folder, dtype)))
