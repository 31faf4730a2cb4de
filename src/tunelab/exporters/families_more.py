"""Export entries for Gemma 3 (text), OLMo 2 and Phi-3: HF folders and llama.cpp GGUF.

What llama.cpp fixes for an architecture, rather than reading it from the file, is checked here
and anything else is refused in one line (llama.cpp `src/llama-model.cpp`, `convert_hf_to_gguf.py`):

* gemma3: every 6th layer global, the others sliding with RoPE base 10000 (`set_swa_pattern(6)`,
  `rope_freq_base_train_swa`), queries scaled by head_dim ** -0.5 (27B, 62 layers: (n_embd /
  n_head) ** -0.5), GELU-tanh, no biases, no final-logit softcapping; RMSNorm weights are stored
  as 1 + w (the converter's `norm_shift`), q/k norms included; linear RoPE scaling only.
* phi3: q/k/v fused (`attn_qkv`), gate/up fused (`ffn_up`, gate rows first); no biases; a head
  width of n_embd / n_head (`wo` is n_embd x n_embd); llama.cpp disables Phi's sliding window
  (PR 13676), so a window shorter than the context is refused; LongRoPE factor tensors and
  partial rotary are not written (tunelab's GGUF reader reads neither back).
* olmo2: RMSNorm of the whole q/k projections, norms after attention and MLP, no biases, a head
  width of n_embd / n_head; `output.weight` is required, so a tied head is written out in full.
"""

from __future__ import annotations

from typing import Any

import gguf

from tunelab.exporters.family_base import (
    FamilyExport,
    State,
    layer_types,
    llama_gguf_hparams,
    llama_hf_config,
    llama_hf_state,
    rope_parameters,
    state_from_plan,
)
from tunelab.models.config import Config
from tunelab.models.loaders.hf_weights import llama_plan

HF_ACTIVATIONS = {"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu", "silu": "silu"}
GEMMA3_PATTERN, GEMMA3_LOCAL_BASE = 6, 10000.0  # llama.cpp's fixed values for gemma3


def _no_bias(cfg: Config) -> list[str]:
    if cfg.qkv_bias or cfg.attn_out_bias or cfg.mlp_bias:
        return ["attention/MLP biases (llama.cpp's architecture has none)"]
    return []


def _whole_heads(cfg: Config) -> list[str]:
    if cfg.head_dim * cfg.n_head != cfg.n_embd:
        return [f"head_dim={cfg.head_dim} * n_head != n_embd={cfg.n_embd}"]
    return []


# -- Gemma 3 (text) ----------------------------------------------------------------------------


def _gemma3_query_scalar(cfg: Config) -> float | int:
    """query_pre_attn_scalar whose ** -0.5 is the model's attention scale (as read back)."""
    scale = cfg.attn_scale if cfg.attn_scale is not None else cfg.head_dim**-0.5
    exact = scale**-2
    return round(exact) if float(round(exact)) ** -0.5 == scale else exact


def _gemma3_hf_config(cfg: Config) -> dict[str, Any]:
    out = llama_hf_config(cfg, "gemma3_text")
    for key in ("rope_theta", "rope_scaling", "mlp_bias", "hidden_act"):
        del out[key]
    local = cfg.rope_local_base if cfg.rope_local_base is not None else cfg.rope_base
    return {
        **out,
        "hidden_activation": HF_ACTIVATIONS[cfg.mlp_activation],
        "rope_parameters": {
            "full_attention": rope_parameters(cfg),
            "sliding_attention": {"rope_type": "default", "rope_theta": local},
        },
        "query_pre_attn_scalar": _gemma3_query_scalar(cfg),
        "sliding_window": cfg.sliding_window,
        "layer_types": layer_types(cfg),
        "final_logit_softcapping": cfg.final_logit_softcapping,
        "attn_logit_softcapping": None,
        "use_bidirectional_attention": False,
    }


def _gemma3_check(cfg: Config, fmt: str) -> list[str]:
    problems = []
    if cfg.qkv_bias != cfg.attn_out_bias or cfg.mlp_bias:
        problems.append(f"qkv_bias={cfg.qkv_bias} with attn_out_bias={cfg.attn_out_bias}")
    if cfg.embedding_scale != cfg.n_embd**0.5:
        problems.append(f"embedding_scale={cfg.embedding_scale} (Gemma 3: sqrt(n_embd))")
    if fmt == "hf":
        return problems
    problems += _no_bias(cfg)
    pattern = [i for i in range(cfg.n_layer) if (i + 1) % GEMMA3_PATTERN]
    windows = [i for i in range(cfg.n_layer) if cfg.layer_window(i) is not None]
    if cfg.sliding_window is None or windows != pattern:
        problems.append(
            f"sliding-window layers {windows} (llama.cpp's gemma3: all but every 6th, {pattern})"
        )
    if cfg.rope_local_base != GEMMA3_LOCAL_BASE:
        problems.append(f"rope_local_base={cfg.rope_local_base} (llama.cpp's gemma3: 10000)")
    head = cfg.n_embd // cfg.n_head if cfg.n_layer == 62 else cfg.head_dim
    if cfg.attn_scale != float(head) ** -0.5:
        problems.append(f"attn_scale={cfg.attn_scale} (llama.cpp's gemma3: {head} ** -0.5)")
    if cfg.final_logit_softcapping is not None:
        problems.append(f"final_logit_softcapping={cfg.final_logit_softcapping}")
    if cfg.mlp_activation != "gelu_tanh":
        problems.append(f"mlp_activation={cfg.mlp_activation} (llama.cpp's gemma3: GELU-tanh)")
    if cfg.rope_scaling is not None and cfg.rope_scaling.get("rope_type") != "linear":
        problems.append(f"rope_scaling={cfg.rope_scaling} (GGUF's gemma3: linear only)")
    return problems


def _gemma3_gguf_state(state: State, cfg: Config) -> State:
    out = llama_hf_state(state, cfg)
    for name in out:
        if name.endswith("norm.weight"):  # Gemma3RMSNorm scales by (1 + w): stored shifted
            out[name] = out[name] + 1.0
    return out


def _gemma3_gguf_hparams(w: gguf.GGUFWriter, cfg: Config) -> None:
    w.add_context_length(cfg.context_length)
    w.add_embedding_length(cfg.n_embd)
    w.add_block_count(cfg.n_layer)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.n_head)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_base)
    assert cfg.sliding_window is not None
    w.add_sliding_window(cfg.sliding_window)
    w.add_head_count_kv(cfg.n_kv_head)
    if cfg.rope_scaling is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(cfg.rope_scaling["factor"])


# -- OLMo 2 ------------------------------------------------------------------------------------


def _olmo2_hf_config(cfg: Config) -> dict[str, Any]:
    out = llama_hf_config(cfg, "olmo2")
    del out["mlp_bias"], out["head_dim"]  # Olmo2Config: heads of hidden_size / heads
    return out


def _olmo2_check(cfg: Config, fmt: str) -> list[str]:
    problems = _whole_heads(cfg)
    if cfg.qkv_bias != cfg.attn_out_bias:
        problems.append(f"qkv_bias={cfg.qkv_bias} with attn_out_bias={cfg.attn_out_bias}")
    return problems if fmt == "hf" else problems + _no_bias(cfg)


def _olmo2_gguf_state(state: State, cfg: Config) -> State:
    out = llama_hf_state(state, cfg)
    if cfg.tie_embeddings:  # llama.cpp's olmo2 requires output.weight
        out["lm_head.weight"] = out["model.embed_tokens.weight"].clone()
    return out


# -- Phi-3 -------------------------------------------------------------------------------------


def _phi3_hf_config(cfg: Config) -> dict[str, Any]:
    out = llama_hf_config(cfg, "phi3")
    del out["mlp_bias"], out["attention_bias"], out["head_dim"], out["rope_scaling"]
    rope = {**rope_parameters(cfg), "partial_rotary_factor": cfg.rotary_fraction}
    out.update(
        rope_parameters=rope,
        partial_rotary_factor=cfg.rotary_fraction,
        sliding_window=cfg.sliding_window,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
    )
    original = (cfg.rope_scaling or {}).get("original_max_position_embeddings")
    if original is not None:  # transformers' Phi3 reads the top-level key first
        out["original_max_position_embeddings"] = original
    return out


def _phi3_check(cfg: Config, fmt: str) -> list[str]:
    problems = _whole_heads(cfg) + _no_bias(cfg)
    if cfg.sliding_window_layers is not None:
        problems.append(f"sliding_window_layers={cfg.sliding_window_layers} (Phi-3: all layers)")
    kind = (cfg.rope_scaling or {}).get("rope_type")
    if kind not in (None, "longrope"):
        problems.append(f"rope_scaling type {kind!r} (Phi-3: LongRoPE)")
    if fmt == "hf":
        return problems
    if cfg.sliding_window is not None and cfg.sliding_window < cfg.context_length:
        problems.append(
            f"sliding_window={cfg.sliding_window} (no GGUF architecture keeps it here: llama.cpp "
            "disables Phi-3's sliding window, its llama has none)"
        )
    if cfg.rope_scaling is not None:
        problems.append("LongRoPE scaling (tunelab's GGUF reader reads no rope_factors tensors)")
    if cfg.rotary_fraction != 1.0:
        problems.append(
            f"rotary_fraction={cfg.rotary_fraction} (tunelab's GGUF reader reads whole-head RoPE)"
        )
    return problems


def _phi3_hf_state(state: State, cfg: Config) -> State:
    return state_from_plan(llama_plan(cfg, fused=True), state, "model.", cfg.tie_embeddings)


def _phi3_gguf_hparams(w: gguf.GGUFWriter, cfg: Config) -> None:
    llama_gguf_hparams(w, cfg)
    if cfg.sliding_window is not None:  # as the converter writes it (llama.cpp ignores it)
        w.add_sliding_window(cfg.sliding_window)


_GEMMA3_TRAITS = {
    "qk_norm": "head",
    "norm_unit_offset": True,
    "norm_scale_fp32": True,
    "post_attn_norm": True,
    "post_mlp_norm": True,
}
_OLMO2_TRAITS = {
    "qk_norm": "full",
    "norm_scale_fp32": True,
    "pre_norm": False,
    "post_attn_norm": True,
    "post_mlp_norm": True,
}

MORE_FAMILIES = [
    FamilyExport(
        "gemma3_text",
        "llama",
        _gemma3_hf_config,
        llama_hf_state,
        gguf.MODEL_ARCH.GEMMA3,
        _gemma3_gguf_hparams,
        _gemma3_gguf_state,
        _gemma3_check,
        requires=_GEMMA3_TRAITS,
        writes=(
            "qkv_bias",
            "attn_out_bias",
            "attn_scale",
            "sliding_window",
            "sliding_window_layers",
            "rope_scaling",
            "rope_local_base",
            "mlp_activation",
            "embedding_scale",
            "final_logit_softcapping",
        ),
    ),
    FamilyExport(
        "olmo2",
        "llama",
        _olmo2_hf_config,
        llama_hf_state,
        gguf.MODEL_ARCH.OLMO2,
        llama_gguf_hparams,
        _olmo2_gguf_state,
        _olmo2_check,
        requires=_OLMO2_TRAITS,
        writes=("qkv_bias", "attn_out_bias"),
    ),
    # After llama and mistral: chosen for what only Phi-3 writes (partial rotary, LongRoPE), and
    # for GGUF, where mistral has no architecture. llama.cpp keeps Phi-3's Q/K rows as they are.
    FamilyExport(
        "phi3",
        "llama",
        _phi3_hf_config,
        _phi3_hf_state,
        gguf.MODEL_ARCH.PHI3,
        _phi3_gguf_hparams,
        _phi3_hf_state,
        _phi3_check,
        writes=("sliding_window", "rope_scaling", "rotary_fraction"),
    ),
]
