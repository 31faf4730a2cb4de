"""config.json of a Hugging Face folder -> `Config`, strictly.

Every key either sets a `Config` field, is on the list of keys that change nothing tunelab
computes (token ids, dtype on disk, versions), or must hold the value tunelab reproduces; any other
key or value is refused in one line naming the file, key and value. Missing keys take the default
of transformers' own config class for that model_type (the reference implementation), never a
guess. Unknown model types are refused.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunelab.models.config import Config
from tunelab.models.loaders.hf_keys import (
    SUPPORTED,
    Keys,
    activation,
    layer_windows,
    read_config_json,
    rope_dict,
    rope_fields,
    zero,
)


def config_from_hf(path: Path) -> Config:
    """`Config` of a Hugging Face folder, or a one-line refusal naming the key and value."""
    hf = read_config_json(path)
    return config_from_hf_dict(hf, str(path / "config.json"), path.name)


def config_from_hf_dict(hf: dict[str, Any], source: str, name: str) -> Config:
    keys = Keys(hf, source)
    builder = _BUILDERS.get(keys.model_type)
    if builder is None:
        raise ValueError(
            f"{source}: unsupported model_type {keys.model_type!r}; tunelab loads "
            f"{', '.join(SUPPORTED)}"
        )
    keys.only("pruned_heads", {}, {})
    fields = builder(keys)
    keys.finish()
    return Config(name=name, **fields)


def _gpt2(k: Keys) -> dict[str, Any]:
    k.only("activation_function", "gelu_new", "gelu_new", "gelu_pytorch_tanh")
    for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
        k.get(key)  # dropout: a training knob (tunelab's model.dropout), not a weight trait
    for key, default in (
        ("scale_attn_weights", True),
        ("scale_attn_by_inverse_layer_idx", False),
        ("reorder_and_upcast_attn", False),
        ("add_cross_attention", False),
        ("tie_word_embeddings", True),
    ):
        k.only(key, default, default)
    for key in ("n_ctx", "summary_type", "summary_use_proj", "summary_activation"):
        k.get(key)  # unused by the LM head model (n_ctx: an alias kept by old configs)
    k.get("summary_proj_to_labels"), k.get("summary_first_dropout"), k.get("task_specific_params")
    return dict(
        family="gpt2",
        vocab_size=k.need("vocab_size"),
        context_length=k.need("n_positions"),
        n_layer=k.need("n_layer"),
        n_head=k.need("n_head"),
        n_embd=k.need("n_embd"),
        intermediate_size=k.get("n_inner") or 4 * k.need("n_embd"),
        norm_eps=k.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=True,
        tokenizer="gpt2",
    )


def _llama_like(k: Keys, defaults: dict[str, Any]) -> dict[str, Any]:
    """The keys shared by every Llama-layout family; `defaults`: its config class's defaults."""
    n_head = k.need("num_attention_heads")
    n_embd = k.need("hidden_size")
    max_pos = k.get("max_position_embeddings", defaults["max_pos"])
    zero(k, "attention_dropout")
    return dict(
        family="llama",
        vocab_size=k.need("vocab_size"),
        context_length=max_pos,
        n_layer=k.need("num_hidden_layers"),
        n_head=n_head,
        n_kv_head=k.get("num_key_value_heads", defaults.get("kv") or n_head),
        n_embd=n_embd,
        intermediate_size=k.need("intermediate_size"),
        head_dim=k.get("head_dim", defaults.get("head_dim") or n_embd // n_head),
        norm_eps=float(k.get("rms_norm_eps", defaults["eps"])),
        tie_embeddings=bool(k.get("tie_word_embeddings", defaults.get("tie", False))),
        tokenizer="hf",
        **rope_fields(k, defaults.get("theta", 10000.0), max_pos),
    )


def _llama(k: Keys) -> dict[str, Any]:
    out = _llama_like(k, dict(max_pos=2048, eps=1e-6))
    bias = bool(k.get("attention_bias", False))
    return dict(
        out,
        qkv_bias=bias,
        attn_out_bias=bias,
        mlp_bias=bool(k.get("mlp_bias", False)),
        mlp_activation=activation(k, "hidden_act", "silu"),
    )


def _mistral(k: Keys) -> dict[str, Any]:
    out = _llama_like(k, dict(max_pos=4096 * 32, eps=1e-6, kv=8))
    window = (
        k.get("sliding_window", 4096) if "sliding_window" not in k.hf else k.get("sliding_window")
    )
    return dict(
        out,
        qkv_bias=False,
        attn_out_bias=False,
        mlp_bias=False,
        sliding_window=window,
        mlp_activation=activation(k, "hidden_act", "silu"),
    )


def _qwen_windows(k: Keys, n_layer: int) -> dict[str, Any]:
    use = bool(k.get("use_sliding_window", False))
    window = (
        k.get("sliding_window", 4096) if "sliding_window" not in k.hf else k.get("sliding_window")
    )
    window = window if use else None
    first = k.get("max_window_layers", 28)
    default = [
        "sliding_attention" if window is not None and i >= first else "full_attention"
        for i in range(n_layer)
    ]
    return layer_windows(k, n_layer, window, default)


def _qwen2(k: Keys) -> dict[str, Any]:
    out = _llama_like(k, dict(max_pos=32768, eps=1e-6, kv=32))
    return dict(
        out,
        qkv_bias=True,  # Qwen2's q/k/v projections always carry biases; its o_proj never does
        attn_out_bias=False,
        mlp_bias=False,
        mlp_activation=activation(k, "hidden_act", "silu"),
        **_qwen_windows(k, out["n_layer"]),
    )


def _qwen3(k: Keys) -> dict[str, Any]:
    out = _llama_like(k, dict(max_pos=32768, eps=1e-6, kv=32, head_dim=128))
    bias = bool(k.get("attention_bias", False))
    return dict(
        out,
        qkv_bias=bias,
        attn_out_bias=bias,
        mlp_bias=False,
        qk_norm="head",
        mlp_activation=activation(k, "hidden_act", "silu"),
        **_qwen_windows(k, out["n_layer"]),
    )


def _gemma3_text(k: Keys) -> dict[str, Any]:
    k.only("use_bidirectional_attention", False, False)
    k.only("attn_logit_softcapping", None, None)  # transformers' Gemma 3 ignores it: refuse
    n_layer, n_embd = k.need("num_hidden_layers"), k.need("hidden_size")
    max_pos = k.get("max_position_embeddings", 131072)
    window = (
        k.get("sliding_window", 4096) if "sliding_window" not in k.hf else k.get("sliding_window")
    )
    pattern = k.get("sliding_window_pattern", 6)
    k.get("_sliding_window_pattern")  # written by transformers 5 beside layer_types
    default_types = [
        "sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n_layer)
    ]
    windows = layer_windows(k, n_layer, window, default_types)
    rope = _gemma3rope_fields(k, max_pos)
    zero(k, "attention_dropout")
    bias = bool(k.get("attention_bias", False))
    return dict(
        family="llama",
        vocab_size=k.need("vocab_size"),
        context_length=max_pos,
        n_layer=n_layer,
        n_head=k.get("num_attention_heads", 8),
        n_kv_head=k.get("num_key_value_heads", 4),
        n_embd=n_embd,
        intermediate_size=k.need("intermediate_size"),
        head_dim=k.get("head_dim", 256),
        norm_eps=float(k.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(k.get("tie_word_embeddings", True)),
        tokenizer="hf",
        qkv_bias=bias,
        attn_out_bias=bias,
        mlp_bias=False,
        qk_norm="head",
        attn_scale=float(k.get("query_pre_attn_scalar", 256)) ** -0.5,
        norm_unit_offset=True,
        norm_scale_fp32=True,
        post_attn_norm=True,
        post_mlp_norm=True,
        mlp_activation=activation(k, "hidden_activation", "gelu_pytorch_tanh"),
        embedding_scale=n_embd**0.5,
        final_logit_softcapping=k.get("final_logit_softcapping"),
        **windows,
        **rope,
    )


def _gemma3rope_fields(k: Keys, max_pos: int) -> dict[str, Any]:
    """Global layers: rope_theta (+ rope_scaling); local layers: plain RoPE at their own base."""
    nested = k.get("rope_parameters")
    if nested and "full_attention" in nested:
        k.used.add("rope_scaling")
        extra = sorted(set(nested) - {"full_attention", "sliding_attention"})
        if extra:
            raise k.refuse(f"rope_parameters.{extra[0]}", nested[extra[0]], "unknown layer type")
        full = rope_dict(k, dict(nested["full_attention"]), "rope_parameters.full_attention")
        local = rope_dict(k, dict(nested.get("sliding_attention") or {}), "rope_parameters")
        full.setdefault("rope_theta", k.get("rope_theta", 1_000_000.0))
        local.setdefault("rope_theta", k.get("rope_local_base_freq", 10_000.0))
        sub = Keys({"model_type": "gemma3_text", "rope_parameters": full}, k.source)
        rope = rope_fields(sub, 1_000_000.0, max_pos)
        local_base = float(local.pop("rope_theta", 10_000.0))
        kind = local.pop("rope_type", local.pop("type", "default"))
    else:
        k.used.add("rope_parameters")
        rope = rope_fields(k, 1_000_000.0, max_pos)
        local_base = float(k.get("rope_local_base_freq", 10_000.0))
        kind, local = "default", {}
    if kind != "default" or local:
        raise k.refuse("rope_parameters.sliding_attention", {"rope_type": kind, **local})
    return dict(rope, rope_local_base=local_base)


def _phi3(k: Keys) -> dict[str, Any]:
    out = _llama_like(k, dict(max_pos=4096, eps=1e-5))
    zero(k, "resid_pdrop", "embd_pdrop")
    k.only("attention_bias", False, False)  # not read by transformers' Phi3: biases are refused
    return dict(
        out,
        qkv_bias=False,
        attn_out_bias=False,
        mlp_bias=False,
        sliding_window=k.get("sliding_window"),
        mlp_activation=activation(k, "hidden_act", "silu"),
    )


def _olmo2(k: Keys) -> dict[str, Any]:
    out = _llama_like(k, dict(max_pos=2048, eps=1e-5))
    bias = bool(k.get("attention_bias", False))
    return dict(
        out,
        qkv_bias=bias,
        attn_out_bias=bias,
        mlp_bias=False,
        qk_norm="full",
        norm_scale_fp32=True,
        pre_norm=False,
        post_attn_norm=True,
        post_mlp_norm=True,
        mlp_activation=activation(k, "hidden_act", "silu"),
    )


_BUILDERS: dict[str, Callable[[Keys], dict[str, Any]]] = {
    "gpt2": _gpt2,
    "llama": _llama,
    "mistral": _mistral,
    "qwen2": _qwen2,
    "qwen3": _qwen3,
    "gemma3_text": _gemma3_text,
    "phi3": _phi3,
    "olmo2": _olmo2,
}
