"""config.json of a Hugging Face folder -> `Config`, strictly.

Every key either sets a `Config` field, is on the list of keys that change nothing tunelab
computes (token ids, dtype on disk, versions), or must hold the value tunelab reproduces; any other
key or value is refused in one line naming the file, key and value. Missing keys take the default
of transformers' own config class for that model_type (the reference implementation), never a
guess. Unknown model types are refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunelab.models.config import Config

# Keys that change nothing tunelab computes (ids, bookkeeping, generation defaults, dtype on disk).
HARMLESS = frozenset(
    {
        "architectures",
        "model_type",
        "transformers_version",
        "torch_dtype",
        "dtype",
        "_name_or_path",
        "name_or_path",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "use_cache",
        "initializer_range",
        "tokenizer_class",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        "id2label",
        "label2id",
        "problem_type",
        "auto_map",  # transformers' own class is the reference; the folder's code is not run
        "cache_implementation",
        "_attn_implementation_autoset",
        "pretraining_tp",  # unused by transformers' Llama: the same product either way
        "max_window_layers",  # read with use_sliding_window (Qwen), harmless without it
    }
)

ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu": "gelu",
}
ROPE_KEYS = frozenset(
    {
        "rope_type",
        "type",
        "rope_theta",
        "factor",
        "low_freq_factor",
        "high_freq_factor",
        "original_max_position_embeddings",
        "beta_fast",
        "beta_slow",
        "mscale",
        "mscale_all_dim",
        "attention_factor",
        "truncate",
        "long_factor",
        "short_factor",
        "partial_rotary_factor",
    }
)
SUPPORTED = ("gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma3_text", "phi3", "olmo2")


class _Keys:
    """config.json with a record of the keys read; `finish` refuses every key left over."""

    def __init__(self, hf: dict[str, Any], source: str) -> None:
        self.hf, self.source, self.used = hf, source, set()
        self.model_type = hf.get("model_type")

    def refuse(self, key: str, value: Any, why: str = "") -> ValueError:
        text = json.dumps(value)
        text = text if len(text) <= 80 else text[:77] + "..."
        return ValueError(
            f"{self.source}: {key}={text} is not supported for model_type "
            f"{self.model_type!r}{'; ' + why if why else ''}"
        )

    def get(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        value = self.hf.get(key, default)
        return default if value is None and default is not None else value

    def need(self, key: str) -> Any:
        self.used.add(key)
        if self.hf.get(key) is None:
            raise KeyError(f"{self.source}: missing key {key!r} for model_type {self.model_type!r}")
        return self.hf[key]

    def only(self, key: str, default: Any, *allowed: Any) -> Any:
        """The key's value, refused unless it is one of `allowed` (absent: `default`)."""
        value = self.get(key, default)
        if value not in allowed:
            raise self.refuse(key, value, f"tunelab reproduces {' or '.join(map(str, allowed))}")
        return value

    def finish(self) -> None:
        for key in sorted(set(self.hf) - self.used - HARMLESS):
            raise self.refuse(
                key, self.hf[key], "tunelab does not know what this key changes, so it refuses it"
            )


def read_config_json(path: Path) -> dict[str, Any]:
    cfg_path = path / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(
            f"{cfg_path}: missing; a Hugging Face model folder needs config.json"
        )
    try:
        hf = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    if not isinstance(hf, dict):
        raise ValueError(f"{cfg_path}: expected a JSON object")
    return hf


def config_from_hf(path: Path) -> Config:
    """`Config` of a Hugging Face folder, or a one-line refusal naming the key and value."""
    hf = read_config_json(path)
    return config_from_hf_dict(hf, str(path / "config.json"), path.name)


def config_from_hf_dict(hf: dict[str, Any], source: str, name: str) -> Config:
    keys = _Keys(hf, source)
    builder = _BUILDERS.get(keys.model_type)
    if builder is None:
        raise ValueError(
            f"{source}: unsupported model_type {keys.model_type!r}; tunelab loads "
            f"{', '.join(SUPPORTED)}"
        )
    fields = builder(keys)
    keys.finish()
    return Config(name=name, **fields)


def _gpt2(k: _Keys) -> dict[str, Any]:
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


def _zero(k: _Keys, *names: str) -> None:
    for key in names:
        k.only(key, 0.0, 0, 0.0)


def _activation(k: _Keys, key: str, default: str) -> str:
    value = k.get(key, default)
    if value not in ACTIVATIONS:
        raise k.refuse(key, value, f"tunelab implements {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[value]


def _rope_dict(k: _Keys, params: Any, key: str) -> dict[str, Any]:
    if not isinstance(params, dict):
        raise k.refuse(key, params, "expected an object")
    for sub in params:
        if sub not in ROPE_KEYS:
            raise k.refuse(f"{key}.{sub}", params[sub], "unknown RoPE parameter")
    return dict(params)


def _rope(k: _Keys, theta_default: float, max_pos: int) -> dict[str, Any]:
    """rope_base / rope_scaling / rotary_fraction from rope_theta + rope_scaling or rope_parameters."""
    key = "rope_parameters" if k.hf.get("rope_parameters") else "rope_scaling"
    k.get("rope_parameters"), k.get("rope_scaling")
    params = _rope_dict(k, k.hf.get(key) or {}, key)
    # Values inside the RoPE dict win over top-level ones, as in transformers' standardization.
    top_theta, top_fraction = k.get("rope_theta"), k.get("partial_rotary_factor")
    base = float(params.pop("rope_theta", None) or top_theta or theta_default)
    kind = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    fraction = params.pop("partial_rotary_factor", None) or top_fraction or 1.0
    if k.model_type == "phi3" and kind in ("su", "yarn"):  # Phi-3's older names of LongRoPE
        kind = "longrope"
    if fraction != 1.0 and k.model_type != "phi3":
        raise k.refuse("partial_rotary_factor", fraction, "transformers rotates whole heads here")
    if kind == "default":
        if params:
            raise k.refuse(key, k.hf.get(key), "parameters given for plain RoPE")
        return dict(rope_base=base, rope_scaling=None, rotary_fraction=float(fraction))
    if kind not in ("linear", "llama3", "yarn", "longrope"):
        raise k.refuse(
            f"{key}.rope_type", kind, "tunelab implements linear, llama3, yarn, longrope"
        )
    if kind in ("llama3", "yarn", "longrope"):
        top = k.get("original_max_position_embeddings")
        if top is None and k.model_type == "phi3":
            top = 4096  # Phi3Config's default, which transformers prefers to the RoPE dict's
        if top is not None:
            params["original_max_position_embeddings"] = top
        params.setdefault("original_max_position_embeddings", max_pos)
    required = {
        "linear": ("factor",),
        "llama3": ("factor", "low_freq_factor", "high_freq_factor"),
        "yarn": ("factor",),
        "longrope": ("long_factor", "short_factor"),
    }[kind]
    for sub in required:
        if sub not in params:
            raise KeyError(f"{k.source}: {key} of type {kind!r} lacks {sub!r}")
    if kind in ("yarn", "longrope") and params.get("factor") is None:
        params["factor"] = max_pos / params["original_max_position_embeddings"]
    return dict(
        rope_base=base, rope_scaling={"rope_type": kind, **params}, rotary_fraction=fraction
    )


def _layer_windows(k: _Keys, n_layer: int, window: int | None, default_types) -> dict[str, Any]:
    types = k.get("layer_types") or default_types
    if not isinstance(types, list) or len(types) != n_layer:
        raise k.refuse("layer_types", types, f"expected a list of {n_layer} layer types")
    for t in types:
        if t not in ("full_attention", "sliding_attention"):
            raise k.refuse("layer_types", t, "tunelab knows full_attention and sliding_attention")
    local = [i for i, t in enumerate(types) if t == "sliding_attention"]
    if local and window is None:
        raise k.refuse("layer_types", types, "sliding_attention layers without a sliding_window")
    if not local:
        return dict(sliding_window=None, sliding_window_layers=None)
    return dict(sliding_window=int(window), sliding_window_layers=local)


def _llama_like(k: _Keys, defaults: dict[str, Any]) -> dict[str, Any]:
    """The keys shared by every Llama-layout family; `defaults`: its config class's defaults."""
    n_head = k.need("num_attention_heads")
    n_embd = k.need("hidden_size")
    max_pos = k.get("max_position_embeddings", defaults["max_pos"])
    _zero(k, "attention_dropout")
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
        **_rope(k, defaults.get("theta", 10000.0), max_pos),
    )


def _llama(k: _Keys) -> dict[str, Any]:
    out = _llama_like(k, dict(max_pos=2048, eps=1e-6))
    bias = bool(k.get("attention_bias", False))
    return dict(
        out,
        qkv_bias=bias,
        attn_out_bias=bias,
        mlp_bias=bool(k.get("mlp_bias", False)),
        mlp_activation=_activation(k, "hidden_act", "silu"),
    )


def _mistral(k: _Keys) -> dict[str, Any]:
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
        mlp_activation=_activation(k, "hidden_act", "silu"),
    )


def _qwen_windows(k: _Keys, n_layer: int) -> dict[str, Any]:
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
    return _layer_windows(k, n_layer, window, default)


def _qwen2(k: _Keys) -> dict[str, Any]:
    out = _llama_like(k, dict(max_pos=32768, eps=1e-6, kv=32))
    return dict(
        out,
        qkv_bias=True,  # Qwen2's q/k/v projections always carry biases; its o_proj never does
        attn_out_bias=False,
        mlp_bias=False,
        mlp_activation=_activation(k, "hidden_act", "silu"),
        **_qwen_windows(k, out["n_layer"]),
    )


def _qwen3(k: _Keys) -> dict[str, Any]:
    out = _llama_like(k, dict(max_pos=32768, eps=1e-6, kv=32, head_dim=128))
    bias = bool(k.get("attention_bias", False))
    return dict(
        out,
        qkv_bias=bias,
        attn_out_bias=bias,
        mlp_bias=False,
        qk_norm="head",
        mlp_activation=_activation(k, "hidden_act", "silu"),
        **_qwen_windows(k, out["n_layer"]),
    )


def _gemma3_text(k: _Keys) -> dict[str, Any]:
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
    windows = _layer_windows(k, n_layer, window, default_types)
    rope = _gemma3_rope(k, max_pos)
    _zero(k, "attention_dropout")
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
        mlp_activation=_activation(k, "hidden_activation", "gelu_pytorch_tanh"),
        embedding_scale=n_embd**0.5,
        final_logit_softcapping=k.get("final_logit_softcapping"),
        **windows,
        **rope,
    )


def _gemma3_rope(k: _Keys, max_pos: int) -> dict[str, Any]:
    """Global layers: rope_theta (+ rope_scaling); local layers: plain RoPE at their own base."""
    nested = k.get("rope_parameters")
    if nested and "full_attention" in nested:
        k.used.add("rope_scaling")
        extra = sorted(set(nested) - {"full_attention", "sliding_attention"})
        if extra:
            raise k.refuse(f"rope_parameters.{extra[0]}", nested[extra[0]], "unknown layer type")
        full = _rope_dict(k, dict(nested["full_attention"]), "rope_parameters.full_attention")
        local = _rope_dict(k, dict(nested.get("sliding_attention") or {}), "rope_parameters")
        full.setdefault("rope_theta", k.get("rope_theta", 1_000_000.0))
        local.setdefault("rope_theta", k.get("rope_local_base_freq", 10_000.0))
        sub = _Keys({"model_type": "gemma3_text", "rope_parameters": full}, k.source)
        rope = _rope(sub, 1_000_000.0, max_pos)
        local_base = float(local.pop("rope_theta", 10_000.0))
        kind = local.pop("rope_type", local.pop("type", "default"))
    else:
        k.used.add("rope_parameters")
        rope = _rope(k, 1_000_000.0, max_pos)
        local_base = float(k.get("rope_local_base_freq", 10_000.0))
        kind, local = "default", {}
    if kind != "default" or local:
        raise k.refuse("rope_parameters.sliding_attention", {"rope_type": kind, **local})
    return dict(rope, rope_local_base=local_base)


def _phi3(k: _Keys) -> dict[str, Any]:
    out = _llama_like(k, dict(max_pos=4096, eps=1e-5))
    _zero(k, "resid_pdrop", "embd_pdrop")
    k.only("attention_bias", False, False)  # not read by transformers' Phi3: biases are refused
    return dict(
        out,
        qkv_bias=False,
        attn_out_bias=False,
        mlp_bias=False,
        sliding_window=k.get("sliding_window"),
        mlp_activation=_activation(k, "hidden_act", "silu"),
    )


def _olmo2(k: _Keys) -> dict[str, Any]:
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
        mlp_activation=_activation(k, "hidden_act", "silu"),
    )


_BUILDERS: dict[str, Callable[[_Keys], dict[str, Any]]] = {
    "gpt2": _gpt2,
    "llama": _llama,
    "mistral": _mistral,
    "qwen2": _qwen2,
    "qwen3": _qwen3,
    "gemma3_text": _gemma3_text,
    "phi3": _phi3,
    "olmo2": _olmo2,
}
