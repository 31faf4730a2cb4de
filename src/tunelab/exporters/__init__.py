"""Export a model to where people run models: a Hugging Face folder, GGUF, or Ollama.

`export_model(source, fmt, out)` loads any source tunelab loads (checkpoint, run folder, preset
with weights, HF folder, GGUF), checks that the format can express the model (`families`), and
writes `out` atomically (`atomic`): the complete export or nothing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tunelab.exporters.atomic import ExportError, atomic_folder, check_destination

log = logging.getLogger(__name__)

FORMATS = ("hf", "gguf", "ollama", "peft")
MANIFEST = "tunelab_export.json"

__all__ = ["FORMATS", "ExportError", "export_model"]


def _check_options(fmt: str, dtype: str | None, gguf_type: str | None) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"format={fmt!r}: unknown; expected one of {', '.join(FORMATS)}")
    if dtype is not None and fmt != "hf":
        raise ExportError(f"dtype={dtype} applies to format=hf only, not {fmt}")
    if gguf_type is not None and fmt not in ("gguf", "ollama"):
        raise ExportError(f"gguf_type={gguf_type} applies to format=gguf|ollama only, not {fmt}")


def _check_source(source: str) -> None:
    from tunelab.models.api import PRETRAINED_PRESETS
    from tunelab.models.config import PRESETS

    if source in PRESETS and source not in PRETRAINED_PRESETS:
        raise ExportError(
            f"ckpt_path={source}: a preset without weights (random initialisation); export a "
            f"checkpoint, run folder, HF folder or .gguf, or one of {', '.join(PRETRAINED_PRESETS)}"
        )


def _export_peft(model, source: str, out: Path, overwrite: bool) -> Path:
    from tunelab.models.lora import has_lora
    from tunelab.models.lora_io import save_peft_adapter

    if not has_lora(model):
        raise ExportError(
            f"format=peft: {source} has no LoRA adapters; export the full model with "
            "format=hf|gguf|ollama"
        )
    with atomic_folder(out, overwrite) as tmp:
        save_peft_adapter(model, tmp)
    log.info("exported the LoRA adapters of %s (PEFT format) to %s", source, out)
    return out


def export_model(
    source: str,
    fmt: str,
    out: str | Path,
    *,
    overwrite: bool = False,
    prompt_style: str | None = None,
    dtype: str | None = None,
    gguf_type: str | None = None,
    max_shard_size: str | int = "5GB",
) -> Path:
    """Export `source` as `fmt` into the folder `out`; returns `out`."""
    from tunelab.data.prompts import get_style
    from tunelab.exporters.chat_templates import chat_templates
    from tunelab.exporters.families import family_export
    from tunelab.exporters.gguf import write_gguf
    from tunelab.exporters.hf import parse_size, write_hf
    from tunelab.exporters.ollama import GGUF_NAME, modelfile, write_modelfile
    from tunelab.models import load_pretrained
    from tunelab.models.lora import has_lora, merge_lora

    out = Path(out)
    _check_options(fmt, dtype, gguf_type)
    shard_bytes = parse_size(max_shard_size)
    check_destination(out, overwrite)  # before the (slow) load
    _check_source(str(source))
    loaded = load_pretrained(str(source), prompt_style=prompt_style)
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    if fmt == "peft":
        return _export_peft(model, str(source), out, overwrite)
    if has_lora(model):  # a LoRA run: adapters folded into the weights first
        merge_lora(model)
        log.info("%s: LoRA adapters merged into the weights before export", source)
    entry = family_export(model.cfg, fmt)
    style = get_style(loaded.prompt_style, tokenizer)
    templates = chat_templates(style)
    if fmt == "ollama":
        modelfile(style, templates, tokenizer)  # refuses before any file is written
    with atomic_folder(out, overwrite) as tmp:
        if fmt == "hf":
            write_hf(model, tokenizer, templates, entry, tmp, dtype or "float32", shard_bytes)
        else:
            write_gguf(model, tokenizer, templates, entry, tmp / GGUF_NAME, gguf_type or "f16")
            if fmt == "ollama":
                write_modelfile(tmp, style, templates, tokenizer)
        manifest = {
            "source": str(source),
            "format": fmt,
            "family": model.cfg.family,
            "prompt_style": style.name,
            "dtype": dtype or "float32" if fmt == "hf" else None,
            "gguf_type": None if fmt == "hf" else gguf_type or "f16",
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    log.info("exported %s as %s to %s", source, fmt, out)
    return out
