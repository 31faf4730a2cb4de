"""The pieces of strict config.json reading shared by every family (see hf_config.py).

`Keys` records which keys a family's reader consumed; whatever is left that is not on the
harmless list is refused in one line. `rope_fields` turns the RoPE keys (old `rope_theta` +
`rope_scaling`, or transformers 5's `rope_parameters`) into `Config` fields.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
        "_attn_implementation",
        "is_llama_config",  # nanotron's marker in SmolLM2 folders
        "transformers.js_config",
        # transformers 4.x wrote every base-config default: generation defaults and bookkeeping
        # (tunelab's generate takes its own arguments)
        "max_length",
        "min_length",
        "do_sample",
        "early_stopping",
        "num_beams",
        "num_beam_groups",
        "diversity_penalty",
        "temperature",
        "top_k",
        "top_p",
        "typical_p",
        "repetition_penalty",
        "length_penalty",
        "no_repeat_ngram_size",
        "encoder_no_repeat_ngram_size",
        "bad_words_ids",
        "num_return_sequences",
        "output_scores",
        "return_dict_in_generate",
        "forced_bos_token_id",
        "forced_eos_token_id",
        "remove_invalid_values",
        "exponential_decay_length_penalty",
        "suppress_tokens",
        "begin_suppress_tokens",
        "use_bfloat16",
        "torchscript",
        "tf_legacy_loss",
        "is_encoder_decoder",
        "is_decoder",
        "cross_attention_hidden_size",
        "tie_encoder_decoder",
        "decoder_start_token_id",
        "sep_token_id",
        "prefix",
        "finetuning_task",
        "chunk_size_feed_forward",
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


class Keys:
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


def zero(k: Keys, *names: str) -> None:
    for key in names:
        k.only(key, 0.0, 0, 0.0)


def activation(k: Keys, key: str, default: str) -> str:
    value = k.get(key, default)
    if value not in ACTIVATIONS:
        raise k.refuse(key, value, f"tunelab implements {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[value]


def rope_dict(k: Keys, params: Any, key: str) -> dict[str, Any]:
    if not isinstance(params, dict):
        raise k.refuse(key, params, "expected an object")
    for sub in params:
        if sub not in ROPE_KEYS:
            raise k.refuse(f"{key}.{sub}", params[sub], "unknown RoPE parameter")
    return dict(params)


def rope_fields(k: Keys, theta_default: float, max_pos: int) -> dict[str, Any]:
    """rope_base / rope_scaling / rotary_fraction from rope_theta + rope_scaling or rope_parameters."""
    key = "rope_parameters" if k.hf.get("rope_parameters") else "rope_scaling"
    k.get("rope_parameters"), k.get("rope_scaling")
    params = rope_dict(k, k.hf.get(key) or {}, key)
    # Values inside the RoPE dict win over top-level ones, as in transformers' standardization.
    top_theta, top_fraction = k.get("rope_theta"), k.get("partial_rotary_factor")
    top_original = k.get("original_max_position_embeddings")  # unused by plain RoPE
    k.only("rope_interleaved", False, False)  # transformers rotates halves, never pairs
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
        top = top_original
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


def layer_windows(k: Keys, n_layer: int, window: int | None, default_types) -> dict[str, Any]:
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
