"""Hugging Face folders: config.json, safetensors weights, generation and tokenizer files.

Loads with `AutoModelForCausalLM` / `AutoTokenizer` (and so vLLM) and with tunelab's own loader.
Weights above `max_shard_size` are split into `model-0000i-of-0000n.safetensors` with a
`model.safetensors.index.json`, as `save_pretrained` does.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import torch

from tunelab.exporters.chat_templates import ChatTemplates
from tunelab.exporters.families import FamilyExport
from tunelab.exporters.tokenizer_files import (
    library_tokenizer,
    tokenizer_config,
    tokenizer_json,
    vocabulary,
)
from tunelab.models.config import Config
from tunelab.models.decoder import Decoder
from tunelab.models.tokenizer import Tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20}
_UNITS["GIB"] = 2**30


def parse_size(value: str | int) -> int:
    """Bytes from 5000000, "5GB", "500MB" or "2GiB"."""
    if isinstance(value, int):
        size = value
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", str(value), re.IGNORECASE)
        if m is None:
            raise ValueError(f"max_shard_size={value!r}: expected bytes or e.g. 5GB, 500MB, 2GiB")
        size = int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])
    if size <= 0:
        raise ValueError(f"max_shard_size={value!r}: must be positive")
    return size


def _json(path: Path, data: Any, indent: int | None = 2) -> None:
    text = json.dumps(data, indent=indent, ensure_ascii=False)
    path.write_text(text + "\n", encoding="utf-8")


def write_weights(state: dict[str, torch.Tensor], folder: Path, max_shard_size: int) -> list[str]:
    """model.safetensors, or shards + index above `max_shard_size` bytes; returns file names."""
    from safetensors.torch import save_file

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_size:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(folder / "model.safetensors"), metadata={"format": "pt"})
        return ["model.safetensors"]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for shard, fname in zip(shards, names, strict=True):
        save_file(shard, str(folder / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, fname))
    total = sum(t.numel() * t.element_size() for t in state.values())
    _json(
        folder / "model.safetensors.index.json",
        {"metadata": {"total_size": total}, "weight_map": weight_map},
    )
    return [*names, "model.safetensors.index.json"]


# Config fields a config.json does not carry: names, tokenizer id, training dropout.
NOT_WRITTEN = ("name", "tokenizer", "extra", "dropout")


def check_read_back(config: dict[str, Any], cfg: Config, model_type: str) -> None:
    """Refuse (one line) a config.json that tunelab's strict reader would not read back into
    `cfg`: the reader is parity-tested against transformers, so equal reads mean equal logits."""
    from tunelab.models.loaders.hf_config import config_from_hf_dict

    try:
        back = config_from_hf_dict(dict(config), "config.json", cfg.name)
    except (ValueError, KeyError) as e:
        raise ValueError(f"format=hf: the {model_type} config.json is not readable: {e}") from None
    for f in dataclasses.fields(Config):
        if f.name not in NOT_WRITTEN and getattr(back, f.name) != getattr(cfg, f.name):
            raise ValueError(
                f"format=hf: the {model_type} config.json cannot express {f.name}="
                f"{getattr(cfg, f.name)!r} (it reads back as {getattr(back, f.name)!r})"
            )


def write_hf(
    model: Decoder,
    tokenizer: Tokenizer,
    templates: ChatTemplates,
    entry: FamilyExport,
    folder: Path,
    dtype: str = "float32",
    max_shard_size: int = 5 * 10**9,
) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: expected one of {', '.join(DTYPES)}")
    cfg = model.cfg
    if tokenizer.kind == "tiktoken":
        vocab = vocabulary(tokenizer, cfg.vocab_size)
        tok_json = json.dumps(tokenizer_json(vocab), ensure_ascii=False)
        tok_config = tokenizer_config(vocab.tokens.__getitem__, tokenizer, templates.jinja, cfg)
    else:  # a `tokenizers` pipeline (SentencePiece kinds): written as tunelab runs it
        tok_json, token_text = library_tokenizer(tokenizer)
        tok_config = tokenizer_config(token_text, tokenizer, templates.jinja, cfg)
    ids = {
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.pad_id,
    }
    config = {**entry.hf_config(cfg), **ids, "torch_dtype": dtype}
    check_read_back(config, cfg, entry.name)
    _json(folder / "config.json", config)
    stops = list(dict.fromkeys([tokenizer.eos_id, *tokenizer.stop_ids]))
    _json(
        folder / "generation_config.json",
        {
            "bos_token_id": tokenizer.bos_id,
            "eos_token_id": stops[0] if len(stops) == 1 else stops,
            "pad_token_id": tokenizer.pad_id,
        },
    )
    state = {
        k: v.detach().to("cpu", DTYPES[dtype]).contiguous()
        for k, v in entry.hf_state(model.state_dict(), cfg).items()
    }
    write_weights(state, folder, max_shard_size)
    (folder / "tokenizer.json").write_text(tok_json + "\n", encoding="utf-8")
    _json(folder / "tokenizer_config.json", tok_config)
