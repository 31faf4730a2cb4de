"""GGUF files written in tests the way llama.cpp's convert_hf_to_gguf.py writes them, from tiny
random Hugging Face models of each family (transformers builds them; tensor names from the gguf
package's own TensorNameMap; Q/K rows permuted for `llama`, Gemma's norms stored as 1 + w)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
import transformers
from gguf import GGUFWriter

from tests.models.test_gguf import MERGES, _tiny_vocab

TINY = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=128,
    rms_norm_eps=1e-6,
    rope_theta=5000.0,
)
FAMILIES = {
    # gguf arch: (transformers config class, model class, extra config)
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(tie_word_embeddings=False)),
    "llama-linear": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(rope_scaling={"rope_type": "linear", "factor": 4.0}),
    ),
    "llama-llama3": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
            rope_theta=500000.0,
        ),
    ),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(tie_word_embeddings=True)),
    "gemma3": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        dict(
            sliding_window=4,
            query_pre_attn_scalar=16,
            rope_local_base_freq=10000.0,
            sliding_window_pattern=2,
            layer_types=["sliding_attention", "sliding_attention"],
        ),
    ),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(tie_word_embeddings=False, pad_token_id=0)),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", dict(tie_word_embeddings=False, pad_token_id=0)),
}


# What convert_hf_to_gguf.py writes for an sp_fixtures folder's tokenizer.model + configs.
SPM_NAMES = {"gemma": "Gemma 3 Tiny", "phi3": "Phi-3 Mini Tiny", "llama2": "Llama 2 Tiny"}
SPM_CONFIG = {
    "gemma": dict(bos="<bos>", eos="<eos>", unk="<unk>", pad="<pad>", add_bos=True),
    "phi3": dict(bos="<s>", eos="<|endoftext|>", unk="<unk>", pad=None, add_bos=False),
    "llama2": dict(bos="<s>", eos="</s>", unk="<unk>", pad=None, add_bos=True),
}


def add_spm_vocab(
    w: GGUFWriter, kind: str, arch: str, name: bool = True, edit: Callable | None = None
) -> None:
    """The `tokenizer.ggml.*` keys llama.cpp's converter writes for a SentencePiece folder
    (`_create_vocab_sentencepiece` / Phi3's set_vocab): pieces with their scores and types, the
    tokenizer's added tokens as control pieces of score -1000, "default" pre-tokenizer, the
    special ids and add_bos/add_eos of tokenizer_config.json, no merges; Gemma 3 adds
    add_space_prefix=false. `name`: write general.name (llama.cpp reads Phi-3's rstrip from it).
    `edit(fields)` may change the fields (None: leave the key out) before they are written."""
    from tests.models.sp_fixtures import SPECIALS, sp_pieces

    pieces, scores, types = sp_pieces(kind)
    for s in SPECIALS[kind]:
        i = pieces.index(s)
        scores[i], types[i] = -1000.0, 3
    conf = SPM_CONFIG[kind]
    f: dict[str, Any] = {
        "name": SPM_NAMES[kind] if name else None,
        "model": "llama",
        "pre": "default",
        "tokens": pieces,
        "scores": scores,
        "types": types,
        "bos": pieces.index(conf["bos"]),
        "eos": pieces.index(conf["eos"]),
        "unk": pieces.index(conf["unk"]),
        "pad": None if conf["pad"] is None else pieces.index(conf["pad"]),
        "add_bos": conf["add_bos"],
        "add_space_prefix": False if arch == "gemma3" else None,
        "merges": None,
    }
    if edit is not None:
        edit(f)
    writers = {
        "name": w.add_name,
        "model": w.add_tokenizer_model,
        "pre": w.add_tokenizer_pre,
        "tokens": w.add_token_list,
        "scores": w.add_token_scores,
        "types": w.add_token_types,
        "bos": w.add_bos_token_id,
        "eos": w.add_eos_token_id,
        "unk": w.add_unk_token_id,
        "pad": w.add_pad_token_id,
        "add_bos": w.add_add_bos_token,
        "add_space_prefix": w.add_add_space_prefix,
        "merges": w.add_token_merges,
    }
    for key, value in f.items():
        if value is not None:
            writers[key](value)
    w.add_add_eos_token(False)


def spm_vocab_size(kind: str) -> int:
    from tests.models.sp_fixtures import sp_pieces

    return len(sp_pieces(kind)[0])


def write_spm_vocab_gguf(
    kind: str, path: Path, name: bool = True, edit: Callable | None = None
) -> Path:
    """A vocabulary-only GGUF (llama.cpp's --vocab-only) of an sp_fixtures kind."""
    from tests.models.sp_fixtures import GEMMA_TEMPLATE, LLAMA2_TEMPLATE, PHI3_TEMPLATE

    arch = {"gemma": "gemma3", "phi3": "phi3", "llama2": "llama"}[kind]
    w = GGUFWriter(str(path), arch)
    add_spm_vocab(w, kind, arch, name=name, edit=edit)
    w.add_chat_template(
        {"gemma": GEMMA_TEMPLATE, "phi3": PHI3_TEMPLATE, "llama2": LLAMA2_TEMPLATE}[kind]
    )
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def hf_model(family: str, vocab_size: int) -> torch.nn.Module:
    cfg_cls, model_cls, extra = FAMILIES[family]
    kwargs = {**TINY, **extra, "vocab_size": vocab_size}
    if family == "phi3":
        kwargs.pop("head_dim")
    config = getattr(transformers, cfg_cls)(**kwargs)
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():  # non-trivial norm weights, so a mis-mapped norm cannot hide
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5) if "norm" in name else p.normal_(0, 0.1)
    return model


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def write_gguf(
    model: torch.nn.Module,
    family: str,
    path: Path,
    template: str | None = None,
    pre: str = "smollm",
    spm: str | None = None,
) -> Path:
    """`spm`: write the SentencePiece vocabulary of that `sp_fixtures` kind (see `add_spm_vocab`)
    instead of the tiny byte-level one."""
    arch = family.split("-")[0]
    c = model.config
    w = GGUFWriter(str(path), arch)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    if arch == "gemma3":
        theta = c.rope_parameters["full_attention"]["rope_theta"]
    else:
        theta = c.rope_parameters["rope_theta"]
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    if arch == "gemma3":
        w.add_sliding_window(c.sliding_window)
    if family == "llama-linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(4.0)
    if spm is not None:
        add_spm_vocab(w, spm, arch)
    else:
        tokens, types = _tiny_vocab()
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(MERGES)
        w.add_eos_token_id(2)
    if template:
        w.add_chat_template(template)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], c.num_hidden_layers)
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        arr = t.detach().float().numpy()
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if arch in ("gemma3", "olmo2") and name.endswith("post_attention_layernorm.weight"):
            new = name.replace("model.layers.", "blk.").replace(
                "post_attention_layernorm", "post_attention_norm"
            )
        assert new is not None, name
        if arch == "llama" and name.endswith("q_proj.weight"):
            arr = _permute(arr, c.num_attention_heads)
        if arch == "llama" and name.endswith("k_proj.weight"):
            arr = _permute(arr, c.num_key_value_heads)
        if arch == "gemma3" and name.endswith("norm.weight"):
            arr = arr + 1
        w.add_tensor(new, np.ascontiguousarray(arr, dtype=np.float32))
    if family == "llama-llama3":
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](c, "cpu")
        plain = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        w.add_tensor("rope_freqs.weight", (plain / scaled).float().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
