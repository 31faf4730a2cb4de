"""Export entry point: `python -m tunelab.export ckpt_path=... format=hf|gguf|ollama out=<folder>`.

ckpt_path: a tunelab .ckpt or run folder, a preset with weights (smollm2-135m), an HF folder or a
.gguf. Writes `out` atomically (refused when it exists and is not empty, unless overwrite=true).
See conf/export.yaml for the options and README "Export" for running the result in
transformers, vLLM, llama.cpp and Ollama.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from tunelab.utils.config import conf_dir

log = logging.getLogger("tunelab.export")


def export(cfg: DictConfig) -> Path:
    from tunelab.exporters import export_model

    for key in ("ckpt_path", "out"):
        if not cfg.get(key):
            raise ValueError(f"{key}: required (python -m tunelab.export ckpt_path=... out=...)")
    out = export_model(
        str(cfg.ckpt_path),
        str(cfg.format),
        Path(str(cfg.out)),
        overwrite=bool(cfg.overwrite),
        prompt_style=cfg.get("prompt_style"),
        dtype=cfg.get("dtype"),
        gguf_type=cfg.get("gguf_type"),
        max_shard_size=cfg.max_shard_size,
    )
    log.info("export folder: %s", out)
    return out


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="export")
def main(cfg: DictConfig) -> Any:
    from tunelab.utils.errors import friendly_errors

    with friendly_errors():
        return export(cfg)


if __name__ == "__main__":
    main()
