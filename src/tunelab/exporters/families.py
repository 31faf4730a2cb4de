"""One table entry per model family: how its config and weights are written for each format.

An entry reuses the HF loader's weight plans (`gpt2_plan`, `llama_plan`: HF tensor -> tunelab
tensor rows) in the export direction, `tunelab_to_llama` / `gpt2_name_map` for GGUF, and
llama.cpp's own tensor-name table (`gguf.get_tensor_name_map`, the one `convert_hf_to_gguf.py`
uses) for GGUF names. The config.json an entry writes is read back by tunelab's strict reader
(`loaders/hf_config.py`) into the same `Config`, which the tests check. A config trait an entry
does not write (a `Config` field away from what the family's basic fields imply) is refused, so a
family or trait added to the decoder later cannot be exported silently wrong.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gguf
import torch

from tunelab.exporters.families_more import MORE_FAMILIES
from tunelab.exporters.family_base import (  # noqa: F401  (FamilyExport: re-exported)
    FamilyExport,
    State,
    layer_types,
    llama_gguf_hparams,
    llama_hf_config,
    llama_hf_state,
    state_from_plan,
)
from tunelab.models.config import Config
from tunelab.models.loaders.gguf_arch import llama3_rope_factors
from tunelab.models.loaders.hf import gpt2_name_map, tunelab_to_llama
from tunelab.models.loaders.hf_weights import gpt2_plan

ROPE_FREQS = "rope_freqs.weight"  # a GGUF name already (convert_hf_to_gguf's extra tensor)

# Config fields every entry writes; any other field must equal what these imply.
BASIC_FIELDS = (
    "name",
    "family",
    "vocab_size",
    "context_length",
    "n_layer",
    "n_head",
    "n_embd",
    "n_kv_head",
    "intermediate_size",
    "head_dim",
    "norm_eps",
    "rope_base",
    "tie_embeddings",
    "dropout",
    "tokenizer",
    "extra",
)


# -- GPT-2 ----------------------------------------------------------------------------------


def _gpt2_check(cfg: Config, fmt: str) -> list[str]:
    problems = []
    if cfg.n_kv_head != cfg.n_head:
        problems.append(f"n_kv_head={cfg.n_kv_head} != n_head={cfg.n_head}")
    if cfg.head_dim * cfg.n_head != cfg.n_embd:
        problems.append(f"head_dim={cfg.head_dim} * n_head != n_embd={cfg.n_embd}")
    if not cfg.tie_embeddings:
        problems.append("untied embeddings (tunelab's GPT-2 loaders always tie them)")
    return problems


def _gpt2_hf_config(cfg: Config) -> dict[str, Any]:
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.context_length,
        "n_ctx": cfg.context_length,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": cfg.intermediate_size,
        "layer_norm_epsilon": cfg.norm_eps,
        "activation_function": "gelu_new",  # tunelab: GELU, tanh approximation
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "use_cache": True,
    }


def _gpt2_hf_state(state: State, cfg: Config) -> State:
    return state_from_plan(gpt2_plan(cfg), state, "transformer.", tied=True)


def _gpt2_gguf_state(state: State, cfg: Config) -> State:
    # llama.cpp stores GPT-2's Conv1D weights as (out, in), tunelab's nn.Linear layout.
    return {f"transformer.{hf}": state[ours] for hf, ours, _ in gpt2_name_map(cfg)}


def _gpt2_gguf_hparams(w: gguf.GGUFWriter, cfg: Config) -> None:
    w.add_context_length(cfg.context_length)
    w.add_embedding_length(cfg.n_embd)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_block_count(cfg.n_layer)
    w.add_head_count(cfg.n_head)
    w.add_layer_norm_eps(cfg.norm_eps)


# -- Llama (Llama 2/3, SmolLM2, ...) -------------------------------------------------------


def _llama_check(cfg: Config, fmt: str) -> list[str]:
    problems = []
    if cfg.qkv_bias != cfg.attn_out_bias:
        problems.append(f"qkv_bias={cfg.qkv_bias} with attn_out_bias={cfg.attn_out_bias}")
    kind = (cfg.rope_scaling or {}).get("rope_type")
    if kind not in (None, "linear", "llama3", "yarn"):
        problems.append(f"rope_scaling type {kind!r} (Llama: linear, llama3, yarn)")
    if fmt != "hf" and kind not in (None, "linear", "llama3"):
        problems.append(f"rope_scaling type {kind!r} (GGUF's llama: linear, llama3)")
    return problems


def _qwen_check(cfg: Config, fmt: str) -> list[str]:
    problems = [] if cfg.qk_norm == "none" else _llama_check(cfg, fmt)  # qwen2: q/k/v bias only
    if fmt != "hf" and cfg.sliding_window is not None:
        problems.append(f"sliding_window={cfg.sliding_window} (GGUF's qwen2/qwen3 have none)")
    return problems


def _mistral_hf_config(cfg: Config) -> dict[str, Any]:
    out = llama_hf_config(cfg, "mistral")
    del out["attention_bias"], out["mlp_bias"]
    return {**out, "sliding_window": cfg.sliding_window}


def _qwen2_hf_config(cfg: Config) -> dict[str, Any]:
    out = llama_hf_config(cfg, "qwen2")
    del out["attention_bias"], out["mlp_bias"]
    return {**out, **_qwen_windows(cfg)}


def _qwen3_hf_config(cfg: Config) -> dict[str, Any]:
    out = llama_hf_config(cfg, "qwen3")
    del out["mlp_bias"]
    return {**out, **_qwen_windows(cfg)}


def _qwen_windows(cfg: Config) -> dict[str, Any]:
    return {
        "use_sliding_window": cfg.sliding_window is not None,
        "sliding_window": cfg.sliding_window,
        "max_window_layers": cfg.n_layer,
        "layer_types": layer_types(cfg),
    }


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF half-rotation rows -> llama.cpp's interleaved RoPE layout (convert_hf_to_gguf)."""
    out, inp = w.shape
    return w.reshape(n_head, 2, out // n_head // 2, inp).swapaxes(1, 2).reshape(out, inp)


def _llama_gguf_state(state: State, cfg: Config) -> State:
    hf = tunelab_to_llama(state, cfg)
    for name, w in hf.items():
        if name.endswith("self_attn.q_proj.weight"):
            hf[name] = _permute(w, cfg.n_head)
        elif name.endswith("self_attn.k_proj.weight"):
            hf[name] = _permute(w, cfg.n_kv_head)
    scaling = cfg.rope_scaling or {}
    if scaling.get("rope_type") == "llama3":  # Llama 3.1+: per-frequency factors, as converted
        factors = llama3_rope_factors(
            cfg.head_dim,
            cfg.rope_base,
            scaling["factor"],
            scaling["low_freq_factor"],
            scaling["high_freq_factor"],
            scaling["original_max_position_embeddings"],
        )
        hf[ROPE_FREQS] = torch.from_numpy(factors)
    return hf


def _llama_gguf_hparams_scaled(w: gguf.GGUFWriter, cfg: Config) -> None:
    llama_gguf_hparams(w, cfg)
    if (cfg.rope_scaling or {}).get("rope_type") == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(cfg.rope_scaling["factor"])


# Tried in order; an entry fits a config when its `requires` traits match and every other trait
# away from the family's defaults is one it `writes`.
FAMILIES: list[FamilyExport] = [
    FamilyExport(
        "gpt2",
        "gpt2",
        _gpt2_hf_config,
        _gpt2_hf_state,
        gguf.MODEL_ARCH.GPT2,
        _gpt2_gguf_hparams,
        _gpt2_gguf_state,
        _gpt2_check,
    ),
    FamilyExport(
        "llama",
        "llama",
        llama_hf_config,
        llama_hf_state,
        gguf.MODEL_ARCH.LLAMA,
        _llama_gguf_hparams_scaled,
        _llama_gguf_state,
        _llama_check,
        writes=("rope_scaling",),
    ),
    # HF folders only (tunelab's GGUF reader reads no MLP biases and no Mistral window).
    FamilyExport(
        "llama",  # attention / MLP biases (Llama's attention_bias, mlp_bias)
        "llama",
        llama_hf_config,
        llama_hf_state,
        None,
        llama_gguf_hparams,
        _llama_gguf_state,
        _llama_check,
        writes=("qkv_bias", "attn_out_bias", "mlp_bias", "rope_scaling"),
    ),
    FamilyExport(
        "mistral",
        "llama",
        _mistral_hf_config,
        llama_hf_state,
        None,
        llama_gguf_hparams,
        _llama_gguf_state,
        _llama_check,
        writes=("sliding_window",),
    ),
    FamilyExport(
        "qwen2",
        "llama",
        _qwen2_hf_config,
        llama_hf_state,
        gguf.MODEL_ARCH.QWEN2,  # llama.cpp keeps Qwen's Q/K rows as they are
        llama_gguf_hparams,
        llama_hf_state,
        _qwen_check,
        requires={"qkv_bias": True, "attn_out_bias": False},
        writes=("sliding_window", "sliding_window_layers"),
    ),
    FamilyExport(
        "qwen3",
        "llama",
        _qwen3_hf_config,
        llama_hf_state,
        gguf.MODEL_ARCH.QWEN3,
        llama_gguf_hparams,
        llama_hf_state,
        _qwen_check,
        requires={"qk_norm": "head"},
        writes=("qkv_bias", "attn_out_bias", "sliding_window", "sliding_window_layers"),
    ),
    *MORE_FAMILIES,  # gemma3_text, olmo2, phi3 (families_more.py)
]


def _traits(cfg: Config) -> dict[str, Any]:
    """The config's traits away from what its family and basic fields imply."""
    implied = Config(**{f: getattr(cfg, f) for f in BASIC_FIELDS})
    return {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(Config)
        if f.name not in BASIC_FIELDS and getattr(cfg, f.name) != getattr(implied, f.name)
    }


def family_export(cfg: Config, fmt: str) -> FamilyExport:
    """The table entry for `cfg`, refusing (one line) what no entry can write."""
    traits = _traits(cfg)
    gguf_only = fmt in ("gguf", "ollama")
    refusal = None  # the first fitting entry's problems, if no later entry writes the model
    for entry in FAMILIES:
        if entry.family != cfg.family or (gguf_only and entry.gguf_arch is None):
            continue
        if any(traits.get(k, getattr(cfg, k)) != v for k, v in entry.requires.items()):
            continue
        if set(traits) <= set(entry.requires) | set(entry.writes):
            problems = entry.check(cfg, fmt)
            if not problems:
                return entry
            refusal = refusal or (
                f"format={fmt}: the {entry.name} export cannot express {'; '.join(problems)}"
            )
    if refusal is not None:
        raise ValueError(refusal)
    shown = "; ".join(f"{k}={v!r}" for k, v in traits.items()) or "no extra traits"
    known = ", ".join(e.name for e in FAMILIES if not gguf_only or e.gguf_arch is not None)
    raise ValueError(
        f"format={fmt}: no {fmt} export for a {cfg.family}-family model with {shown} "
        f"(exports: {known})"
    )
