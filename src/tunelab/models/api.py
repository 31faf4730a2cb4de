"""`load_model(source)`: one entry point for presets, HF folders, GGUF files and checkpoints."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from tunelab.models.config import PRESETS, Config
from tunelab.models.decoder import Decoder
from tunelab.models.tokenizer import Tokenizer, tokenizer_by_name

log = logging.getLogger(__name__)

# Presets whose real weights tunelab can load offline.
PRETRAINED_PRESETS = {"smollm2-135m": "smollm2"}
DEFAULT_STYLES = {"smollm2": "smollm2", "gpt2": "alpaca"}


@dataclass
class LoadedModel:
    model: Decoder
    tokenizer: Tokenizer
    prompt_style: str
    source: str


def load_pretrained(
    source: str,
    prompt_style: str | None = None,
    dropout: float | None = None,
    seed: int | None = None,
    context_length: int | None = None,
    lora: dict | None = None,
    untie_embeddings: bool = False,
) -> LoadedModel:
    """Load a model and its tokenizer.

    source: a preset name (`gpt2-124m`, `smollm2-135m`, `tiny-gpt2`, ...), a Hugging Face-format
    folder, a `.gguf` file, or a tunelab checkpoint (`.ckpt` file or run folder). GPT-2 presets
    have no weights offline, so they start from GPT-2's random initialisation (logged).
    prompt_style: override the style saved with the checkpoint / the model's default.
    lora: LoRA settings (rank, alpha, dropout, targets; `tunelab.models.lora.LoRAConfig`): the
    model is frozen and gets adapters. A LoRA checkpoint as source is merged first.
    untie_embeddings: give a tied LM head its own copy of the token embedding, so the two train
    apart, as in the book (its weight loader copies GPT-2's `wte` into a separate `out_head`).
    """
    from tunelab.models.loaders.checkpoint import load_tunelab_checkpoint

    path = Path(source)
    style = None
    if source in PRESETS:
        if source in PRETRAINED_PRESETS:
            from tunelab.models.loaders.gguf import load_gguf, smollm2_gguf_path

            model, tokenizer = load_gguf(smollm2_gguf_path())
        else:
            if seed is not None:
                torch.manual_seed(seed)
            cfg = Config.from_preset(source)
            model = Decoder(cfg)
            tokenizer = preset_tokenizer(cfg.tokenizer)
            log.warning(
                "model %s: preset shape with random initialisation (no weights given)", source
            )
    elif source.startswith("ollama:"):  # a model in Ollama's store (loaders/ollama.py)
        from tunelab.models.loaders.gguf import load_gguf
        from tunelab.models.loaders.ollama import resolve

        model, tokenizer = load_gguf(resolve(source))
    elif path.suffix == ".gguf":
        from tunelab.models.loaders.gguf import load_gguf

        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        model, tokenizer = load_gguf(path)
    elif path.suffix == ".ckpt" or (path.is_dir() and not (path / "config.json").exists()):
        model, tokenizer, style = load_tunelab_checkpoint(path)
    elif path.is_dir():
        from tunelab.models.loaders.hf import load_hf_folder

        model = load_hf_folder(path)
        tokenizer = _hf_folder_tokenizer(path, model.cfg)
    else:
        raise FileNotFoundError(
            f"model source {source!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor an "
            "existing folder, .gguf or .ckpt file"
        )
    if dropout is not None:
        _set_dropout(model, dropout)
    if context_length is not None:
        model.cfg.context_length = min(model.cfg.context_length, context_length)
    if untie_embeddings:
        untie_lm_head(model)
    if lora is not None:
        from tunelab.models.lora import apply_lora, has_lora, merge_lora

        if has_lora(model):
            merge_lora(model)
        base = {"source": source if source in PRESETS else str(path.resolve()), "seed": seed}
        if context_length is not None:
            base["context_length"] = context_length
        apply_lora(model, lora, base=base)
    default = "model" if tokenizer.chat_template else "alpaca"  # the checkpoint's own template
    style = prompt_style or style or DEFAULT_STYLES.get(tokenizer.name, default)
    return LoadedModel(model, tokenizer, style, str(source))


def preset_tokenizer(name: str) -> Tokenizer:
    """Tokenizer for a preset's `tokenizer` id: `gpt2`, or `smollm2` (from its GGUF)."""
    if name == "smollm2":
        from tunelab.models.loaders.gguf import smollm2_gguf_path, tokenizer_from_gguf

        return tokenizer_from_gguf(smollm2_gguf_path())
    return tokenizer_by_name(name)


def _hf_folder_tokenizer(path: Path, cfg: Config) -> Tokenizer:
    if (path / "tokenizer.json").exists() and cfg.family != "gpt2":
        from tunelab.models.loaders.hf_tokenizer import tokenizer_from_hf_json

        return tokenizer_from_hf_json(path / "tokenizer.json")
    if cfg.family == "gpt2":
        return tokenizer_by_name("gpt2")
    raise FileNotFoundError(f"{path}: no tokenizer.json beside the weights")


def untie_lm_head(model: Decoder) -> None:
    """An LM head tied to the token embedding gets its own parameter (a copy of it)."""
    if not model.cfg.tie_embeddings:
        return
    weight = model.wte.weight
    model.lm_head.weight = torch.nn.Parameter(weight.detach().clone(), weight.requires_grad)
    model.cfg.tie_embeddings = False


def _set_dropout(model: Decoder, p: float) -> None:
    model.cfg.dropout = p
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = p
    for block in model.blocks:
        block.attn.dropout = p


def load_model(source: str, **kwargs) -> tuple[Decoder, Tokenizer]:
    """`model, tokenizer = load_model(source)`; see `load_pretrained` for the sources."""
    loaded = load_pretrained(source, **kwargs)
    return loaded.model, loaded.tokenizer
