"""`python -m tunelab.serve ckpt_path=... [port=8000]`: load, check the settings, serve."""

from __future__ import annotations

import logging
from typing import Any

import hydra
from omegaconf import DictConfig

from tunelab.serve.app import create_app
from tunelab.serve.server import uvicorn_options
from tunelab.serve.settings import resolve_device, settings_from_config
from tunelab.utils.config import conf_dir

log = logging.getLogger("tunelab.serve")


def serve(cfg: Any) -> None:
    import uvicorn

    from tunelab.models import load_pretrained

    if not cfg.get("ckpt_path"):
        raise ValueError("ckpt_path: give the checkpoint (or preset, HF folder, .gguf) to serve")
    loaded = load_pretrained(str(cfg.ckpt_path), prompt_style=cfg.get("prompt_style"))
    loaded.model.to(resolve_device(cfg.get("device", "auto")))
    settings = settings_from_config(cfg, loaded)
    loopback = cfg.host in ("127.0.0.1", "localhost", "::1")
    if not loopback and not settings.token:
        log.warning(
            "serving on %s without a token: anyone who reaches this port can use the model; set "
            "the environment variable %s",
            cfg.host,
            cfg.get("token_env") or "named by token_env",
        )
    log.info(
        "serving %s as %r on http://%s:%d (OpenAI: /v1/chat/completions, Ollama: /api/chat); "
        "max_new_tokens %d; %s",
        loaded.source,
        settings.model_name,
        cfg.host,
        cfg.port,
        settings.max_new_tokens,
        "bearer token required" if settings.token else "no token",
    )
    app = create_app(loaded, settings)
    uvicorn.run(
        app, host=cfg.host, port=int(cfg.port), log_level="info", **uvicorn_options(settings)
    )


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="serve")
def main(cfg: DictConfig) -> None:
    from tunelab.utils.errors import friendly_errors

    with friendly_errors():
        serve(cfg)
