"""What a model family's export entry is, and the pieces several entries share.

`FamilyExport` says how one HF architecture's config.json and tensors, and one llama.cpp
architecture's metadata and tensors, are written from a tunelab `Config` and state dict. The
tensors come from the HF loader's own weight plans (`llama_plan`, `gpt2_plan`) run backwards
(`state_from_plan`), so the export and the load can never disagree about a name or a row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gguf
import torch

from tunelab.models.config import Config
from tunelab.models.loaders.hf_weights import Entry, llama_plan

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class FamilyExport:
    name: str  # the HF model_type written
    family: str  # tunelab's Config.family
    hf_config: Callable[[Config], dict[str, Any]]
    hf_state: Callable[[State, Config], State]
    gguf_arch: gguf.MODEL_ARCH | None  # None: GGUF cannot express the family
    gguf_hparams: Callable[[gguf.GGUFWriter, Config], None]
    gguf_state: Callable[[State, Config], State]  # HF names, GGUF layout (Q/K permuted...)
    check: Callable[[Config, str], list[str]]  # what it cannot write in a format, as phrases
    requires: dict[str, Any] = dataclasses.field(default_factory=dict)  # traits identifying it
    writes: tuple[str, ...] = ()  # further traits it writes, whatever their value


def state_from_plan(plan: dict[str, Entry], state: State, prefix: str, tied: bool) -> State:
    """The HF tensors a loader plan reads, rebuilt from tunelab's (rows, transposes, fusions)."""
    out: State = {}
    for name, entry in plan.items():
        if tied and any(t.check_equal for t in entry.targets):
            continue  # a tied head: HF folders leave it out
        parts = []
        for target in sorted(entry.targets, key=lambda t: (t.src_rows or (0, 0))[0]):
            w = state[target.dest]
            if target.dest_rows is not None:
                w = w[target.dest_rows[0] : target.dest_rows[1]]
            parts.append(w.t() if target.transpose else w)
        tensor = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
        if tuple(tensor.shape) != entry.shape:
            raise ValueError(f"export: {name} rebuilt as {tuple(tensor.shape)}, not {entry.shape}")
        key = name if name == "lm_head.weight" else prefix + name
        out[key] = tensor.contiguous().clone()
    return out


def llama_hf_state(state: State, cfg: Config) -> State:
    return state_from_plan(llama_plan(cfg), state, "model.", cfg.tie_embeddings)


def layer_types(cfg: Config) -> list[str]:
    return [
        "sliding_attention" if cfg.layer_window(i) is not None else "full_attention"
        for i in range(cfg.n_layer)
    ]


MODEL_CLASSES = {
    "llama": "Llama",
    "mistral": "Mistral",
    "qwen2": "Qwen2",
    "qwen3": "Qwen3",
    "gemma3_text": "Gemma3",
    "phi3": "Phi3",
    "olmo2": "Olmo2",
}


def rope_parameters(cfg: Config) -> dict[str, Any]:
    """transformers 5's `rope_parameters`: the scaling as tunelab holds it, plus the base."""
    return {**(cfg.rope_scaling or {"rope_type": "default"}), "rope_theta": cfg.rope_base}


def llama_hf_config(cfg: Config, model_type: str = "llama") -> dict[str, Any]:
    return {
        "architectures": [f"{MODEL_CLASSES[model_type]}ForCausalLM"],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.context_length,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_base,
        "rope_parameters": rope_parameters(cfg),
        "rope_scaling": None,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": bool(cfg.qkv_bias),
        "mlp_bias": bool(cfg.mlp_bias),
        "hidden_act": "silu",
        "attention_dropout": 0.0,  # tunelab's dropout is a training knob, not the model's
        "use_cache": True,
    }


def llama_gguf_hparams(w: gguf.GGUFWriter, cfg: Config) -> None:
    w.add_vocab_size(cfg.vocab_size)
    w.add_context_length(cfg.context_length)
    w.add_embedding_length(cfg.n_embd)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_block_count(cfg.n_layer)
    w.add_head_count(cfg.n_head)
    w.add_head_count_kv(cfg.n_kv_head)
    if cfg.head_dim * cfg.n_head != cfg.n_embd:
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_base)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
