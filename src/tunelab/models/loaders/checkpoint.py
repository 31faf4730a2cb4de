"""tunelab checkpoints: Lightning `.ckpt` files carrying model config, tokenizer and prompt style.

A LoRA run's checkpoints hold only the adapters (`tunelab.lora` metadata: LoRA config, base source
and hash); `load_tunelab_checkpoint` then loads the base and puts the adapters on it
(`tunelab.models.lora_io`).

A task writes `checkpoint["tunelab"] = {"model_config", "tokenizer", "prompt_style"}` and the model
weights under `state_dict` with the `model.` prefix. Only `torch.load(weights_only=True)` is used,
so a checkpoint that carries code is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tunelab.models.config import Config
from tunelab.models.decoder import Decoder
from tunelab.models.loaders.hf import load_state_strict
from tunelab.models.tokenizer import Tokenizer

CKPT_NAMES = ("best.ckpt", "last.ckpt")


def resolve_ckpt_path(path: str | Path) -> Path:
    """A .ckpt file, or a folder (run dir or its checkpoints/) holding best.ckpt or last.ckpt."""
    path = Path(path)
    if path.is_dir():
        for folder in (path, path / "checkpoints"):
            for name in CKPT_NAMES:
                if (folder / name).is_file():
                    return folder / name
        raise FileNotFoundError(f"{path}: no checkpoint found (looked for {', '.join(CKPT_NAMES)})")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = resolve_ckpt_path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"{path}: cannot be read as a tunelab checkpoint (truncated, corrupt, or carrying code "
            f"refused by weights_only=True): {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        ) from None
    if not isinstance(ckpt, dict) or "tunelab" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(
            f"{path}: not a tunelab checkpoint (no 'tunelab' metadata or 'state_dict')"
        )
    return ckpt


def load_tunelab_checkpoint(path: str | Path) -> tuple[Decoder, Tokenizer, str]:
    ckpt = read_checkpoint(path)
    meta = ckpt["tunelab"]
    if meta.get("lora"):  # adapters only: the base is loaded from its source, then the adapters
        from tunelab.models.lora_io import load_lora_checkpoint

        return load_lora_checkpoint(ckpt, str(resolve_ckpt_path(path)))
    cfg = Config.from_dict(meta["model_config"])
    model = Decoder(cfg)
    prefix = "model."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    if cfg.tie_embeddings and "lm_head.weight" not in state and "wte.weight" in state:
        state["lm_head.weight"] = state["wte.weight"]
    load_state_strict(model, state, str(path))
    return model.eval(), Tokenizer.from_spec(meta["tokenizer"]), meta.get("prompt_style", "alpaca")


def checkpoint_metadata(model: Decoder, tokenizer: Tokenizer, prompt_style: str) -> dict[str, Any]:
    return {
        "model_config": model.cfg.to_dict(),
        "tokenizer": tokenizer.to_spec(),
        "prompt_style": prompt_style,
    }
