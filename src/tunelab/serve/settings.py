"""Server settings: from conf/serve.yaml (validated, one line per bad key) or built in tests."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.models.api import LoadedModel


@dataclass
class ServeSettings:
    model_name: str = "tunelab"
    max_new_tokens: int = 256  # default and cap for every request
    max_request_bytes: int = 1 << 20
    token: str | None = None  # the bearer token itself (read from the environment)
    temperature: float = 0.0  # when the request gives none: greedy
    request_timeout: float = 20.0  # seconds to send a request's headers, and then its body


def settings_from_config(cfg: Any, loaded: LoadedModel) -> ServeSettings:
    token = None
    if cfg.get("token_env"):
        token = os.environ.get(cfg.token_env) or None
    name = cfg.get("model_name") or _default_name(loaded.source)
    for key in ("max_new_tokens", "max_request_bytes"):
        value = cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"serve: {key} must be an integer >= 1, got {value!r}")
    temperature = cfg.get("temperature", 0.0)
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not 0 <= temperature <= 2
    ):
        raise ValueError(f"serve: temperature must be a number in [0, 2], got {temperature!r}")
    timeout = cfg.get("request_timeout", 20.0)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout < math.inf
    ):
        raise ValueError(f"serve: request_timeout must be a number of seconds > 0, got {timeout!r}")
    return ServeSettings(
        model_name=name,
        max_new_tokens=int(cfg.max_new_tokens),
        max_request_bytes=int(cfg.max_request_bytes),
        token=token,
        temperature=float(temperature),
        request_timeout=float(timeout),
    )


def resolve_device(device: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def _default_name(source: str) -> str:
    """`tunelab-<run folder>` for a run's checkpoint, else the preset/file/folder name."""
    path = Path(source)
    if path.suffix == ".ckpt" and path.parent.name == "checkpoints":
        return f"tunelab-{path.parent.parent.name}"
    return path.stem or "tunelab"
