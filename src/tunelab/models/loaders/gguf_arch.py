"""GGUF architectures as Hugging Face configs and tensor names.

A GGUF written by llama.cpp's `convert_hf_to_gguf.py` is a Hugging Face checkpoint in another
container: `hf_config_from_gguf` turns its metadata back into the config.json the model came from
(so every family trait is read by `hf_config.config_from_hf_dict`, the one place that knows them),
and `hf_tensor_name` its tensor names back into the folder's names. What the converter changed is
undone here, as transformers' own GGUF loader undoes it:

* `llama`: the rows of every Q and K head are permuted for llama.cpp's interleaved RoPE
  (`gguf.unpermute_rows` inverts it); Llama 3.1's RoPE scaling is a `rope_freqs` tensor, matched
  exactly against the llama3 parameters that produce it (else refused);
* `gemma3`: every RMSNorm weight is stored as 1 + w; the local RoPE base (10000) and the pattern
  of sliding layers (5 local, 1 global) are llama.cpp's fixed values for the architecture;
* `phi3`: q/k/v and gate/up are fused as in the folder (`attn_qkv`, `ffn_up` of 2x rows);
* `qwen2`, `qwen3`, `olmo2`: names only.

Anything else (another architecture, LongRoPE factor tensors, partial rotary, key length !=
value length, mixture of experts) is refused in one line naming it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

ARCHITECTURES = {
    "llama": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma3": "gemma3_text",
    "phi3": "phi3",
    "olmo2": "olmo2",
}
GEMMA3_LOCAL_BASE = 10000.0  # llama.cpp: rope_freq_base_train_swa for gemma3
GEMMA3_PATTERN = 6  # llama.cpp: every 6th layer global

_GLOBAL = {
    "token_embd.weight": "embed_tokens.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_qkv": "self_attn.qkv_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_norm": "post_attention_layernorm",
}


def hf_tensor_name(arch: str, name: str, n_layer: int, source: str) -> str:
    """The Hugging Face name (without `model.`) of a GGUF tensor, or a one-line refusal."""
    if name in _GLOBAL:
        return _GLOBAL[name]
    parts = name.split(".")
    if (
        len(parts) == 4
        and parts[0] == "blk"
        and parts[1].isdigit()
        and parts[3] in ("weight", "bias")
    ):
        stem = parts[2]
        hf = _BLOCK.get(stem)
        if arch == "gemma3" and stem == "ffn_norm":
            hf = "pre_feedforward_layernorm"
        if arch == "phi3" and stem == "ffn_up":
            hf = "mlp.gate_up_proj"
        if hf is not None:
            if int(parts[1]) >= n_layer:
                raise ValueError(f"{source}: tensor {name!r} is beyond block_count={n_layer}")
            return f"layers.{parts[1]}.{hf}.{parts[3]}"
    raise ValueError(
        f"{source}: tensor {name!r} has no place in a {arch} model (tunelab maps llama.cpp's "
        "standard names; LongRoPE factors, experts and other extras are not supported)"
    )


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Invert convert_hf_to_gguf's Q/K permutation (llama.cpp interleaved -> HF half rotation)."""
    out = w.shape[0]
    rest = w.shape[1:]
    return w.reshape(n_head, out // n_head // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(
    head_dim: int, base: float, factor: float, low: float, high: float, original: int
) -> np.ndarray:
    """The `rope_freqs` tensor convert_hf_to_gguf writes for Llama 3.1-style RoPE scaling."""
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    low_wavelen, high_wavelen = original / low, original / high
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


# Llama 3.1 / 3.2 RoPE scaling as released: (factor, low_freq_factor, high_freq_factor, original).
LLAMA3_CANDIDATES = [(f, 1.0, 4.0, 8192) for f in (8.0, 32.0, 16.0, 4.0, 2.0)]


def llama3_scaling_from_factors(
    factors: np.ndarray, head_dim: int, base: float, source: str
) -> dict[str, Any]:
    for factor, low, high, original in LLAMA3_CANDIDATES:
        expected = llama3_rope_factors(head_dim, base, factor, low, high, original)
        if expected.shape == factors.shape and np.allclose(expected, factors, rtol=1e-6, atol=0):
            return {
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low,
                "high_freq_factor": high,
                "original_max_position_embeddings": original,
            }
    raise ValueError(
        f"{source}: tensor 'rope_freqs.weight' matches no released Llama 3 RoPE scaling "
        "(factor 2/4/8/16/32, low 1, high 4, original context 8192); unsupported"
    )


def hf_config_from_gguf(
    arch: str,
    meta: Callable[..., Any],
    tensor_names: set[str],
    vocab_size: int,
    source: str,
    rope_freqs: np.ndarray | None = None,
) -> dict[str, Any]:
    """The config.json a GGUF's metadata stands for. `meta(key, default)` reads `{arch}.key`."""
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"{source}: GGUF architecture {arch!r} is not supported; tunelab loads "
            f"{', '.join(ARCHITECTURES)}"
        )
    if meta("expert_count", 0):
        raise ValueError(f"{source}: mixture-of-experts GGUFs are not supported")
    n_embd = int(meta("embedding_length"))
    n_head = int(meta("attention.head_count"))
    head_dim = int(meta("attention.key_length", n_embd // n_head))
    if int(meta("attention.value_length", head_dim)) != head_dim:
        raise ValueError(f"{source}: attention key length {head_dim} != value length")
    rot = int(meta("rope.dimension_count", head_dim))
    if rot != head_dim:
        raise ValueError(
            f"{source}: RoPE on {rot} of {head_dim} head dimensions (partial rotary) is not "
            "supported"
        )
    declared = meta("vocab_size", None)
    if declared is not None and int(declared) != vocab_size:
        raise ValueError(
            f"{source}: {arch}.vocab_size={declared} but the token list has {vocab_size} tokens"
        )
    hf: dict[str, Any] = {
        "model_type": ARCHITECTURES[arch],
        "vocab_size": vocab_size,
        "max_position_embeddings": int(meta("context_length")),
        "num_hidden_layers": int(meta("block_count")),
        "hidden_size": n_embd,
        "intermediate_size": int(meta("feed_forward_length")),
        "num_attention_heads": n_head,
        "num_key_value_heads": int(meta("attention.head_count_kv", n_head)),
        "head_dim": head_dim,
        "rms_norm_eps": _f32(meta("attention.layer_norm_rms_epsilon")),
        "rope_theta": _f32(meta("rope.freq_base", 10000.0)),
        "tie_word_embeddings": "output.weight" not in tensor_names,
    }
    scaling = _rope_scaling(meta, source)
    if rope_freqs is not None:
        if arch != "llama" or scaling is not None:
            raise ValueError(f"{source}: tensor 'rope_freqs.weight' is only read for llama")
        scaling = llama3_scaling_from_factors(rope_freqs, head_dim, hf["rope_theta"], source)
    if scaling is not None:
        hf["rope_scaling"] = scaling
    has_bias = any(n.endswith("attn_q.bias") for n in tensor_names)
    if arch in ("llama", "qwen3", "olmo2", "gemma3"):
        hf["attention_bias"] = has_bias
    if arch == "phi3":
        window = meta("attention.sliding_window", None)
        hf["sliding_window"] = None if window is None else int(window)
    if arch == "gemma3":
        hf["sliding_window"] = int(meta("attention.sliding_window"))
        hf["sliding_window_pattern"] = GEMMA3_PATTERN
        hf["rope_local_base_freq"] = GEMMA3_LOCAL_BASE
        # llama.cpp scales queries by head_dim ** -0.5, except for the 27B model (62 layers)
        hf["query_pre_attn_scalar"] = (
            n_embd // n_head if hf["num_hidden_layers"] == 62 else head_dim
        )
        softcap = meta("final_logit_softcapping", None)
        hf["final_logit_softcapping"] = None if softcap is None else _f32(softcap)
    return hf


def _rope_scaling(meta: Callable[..., Any], source: str) -> dict[str, Any] | None:
    kind = meta("rope.scaling.type", "none")
    if kind in ("none", None):
        return None
    factor = _f32(meta("rope.scaling.factor"))
    if kind == "linear":
        return {"rope_type": "linear", "factor": factor}
    raise ValueError(f"{source}: RoPE scaling {kind!r} is not supported")


def _f32(value: float) -> float:
    """The shortest decimal for a float32 (GGUF stores 1e-5 as 9.99999974e-06; keep 1e-05)."""
    return float(str(np.float32(value)))
