"""Ollama's own model store: `ollama:qwen2.5:0.5b` -> the GGUF blob Ollama runs.

Ollama keeps models under `$OLLAMA_MODELS` (default `~/.ollama/models`): a manifest per name at
`manifests/<host>/<namespace>/<model>/<tag>` (JSON, OCI style) whose layer of media type
`application/vnd.ollama.image.model` names the GGUF blob `blobs/sha256-<hex>` by digest. Names
are `model[:tag]`, `namespace/model[:tag]` or `host/namespace/model[:tag]` (defaults:
registry.ollama.ai, library, latest); `ollama:/path/to/manifest` reads a manifest file directly.

Refused in one line: a manifest that is missing or not JSON, no model layer or several, a blob
missing or of another size than the manifest says, and layers that change the model (LoRA
adapters, vision projectors), which tunelab cannot apply.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

PREFIX = "ollama:"
MODEL_LAYER = "application/vnd.ollama.image.model"
REFUSED_LAYERS = {
    "application/vnd.ollama.image.adapter": "a LoRA adapter layer",
    "application/vnd.ollama.image.projector": "a vision projector layer",
}
DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG = "registry.ollama.ai", "library", "latest"


def models_dir() -> Path:
    """`$OLLAMA_MODELS`, else `~/.ollama/models` (Ollama's own default)."""
    env = os.environ.get("OLLAMA_MODELS")
    return Path(env).expanduser() if env else Path.home() / ".ollama" / "models"


def manifest_path(name: str, root: Path | None = None) -> Path:
    """Where Ollama keeps the manifest of `name` (`model[:tag]`, `ns/model[:tag]`, ...)."""
    root = root or models_dir()
    base, _, tag = name.rpartition(":") if ":" in name.split("/")[-1] else (name, "", "")
    parts = base.split("/")
    if not base or any(not p or p in (".", "..") for p in parts) or len(parts) > 3:
        raise ValueError(f"ollama: {name!r} is not a model name (model[:tag], ns/model[:tag])")
    if len(parts) == 1:
        parts = [DEFAULT_HOST, DEFAULT_NAMESPACE, *parts]
    elif len(parts) == 2:
        parts = [DEFAULT_HOST, *parts]
    return root / "manifests" / Path(*parts) / (tag or DEFAULT_TAG)


def resolve(source: str) -> Path:
    """The GGUF blob of an `ollama:` source (a model name or a manifest file path)."""
    spec = source.removeprefix(PREFIX)
    given = Path(spec).expanduser()
    if spec.startswith(("/", "./", "~")) or given.is_file():
        manifest, root = given, _root_of(given)
    else:
        root = models_dir()
        manifest = manifest_path(spec, root)
    if not manifest.is_file():
        raise FileNotFoundError(
            f"ollama: no manifest for {spec!r} at {manifest} (is it pulled? OLLAMA_MODELS={root})"
        )
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{manifest}: not a JSON manifest: {e}") from None
    layers = data.get("layers") if isinstance(data, dict) else None
    if not isinstance(layers, list):
        raise ValueError(f"{manifest}: manifest has no 'layers' list")
    for layer in layers:
        kind = layer.get("mediaType") if isinstance(layer, dict) else None
        if kind in REFUSED_LAYERS:
            raise ValueError(
                f"{manifest}: the model carries {REFUSED_LAYERS[kind]} ({kind}), which tunelab "
                "cannot apply; unsupported"
            )
    models = [x for x in layers if isinstance(x, dict) and x.get("mediaType") == MODEL_LAYER]
    if len(models) != 1:
        raise ValueError(f"{manifest}: expected one {MODEL_LAYER} layer, found {len(models)}")
    digest = str(models[0].get("digest", ""))
    algo, _, hexdigest = digest.partition(":")
    if algo != "sha256" or len(hexdigest) != 64:
        raise ValueError(f"{manifest}: model layer digest {digest!r} is not sha256:<64 hex>")
    blob = root / "blobs" / f"sha256-{hexdigest}"
    if not blob.is_file():
        blob = root / "blobs" / f"sha256:{hexdigest}"  # older Ollama versions
    if not blob.is_file():
        raise FileNotFoundError(f"{manifest}: blob {digest} is missing under {root / 'blobs'}")
    size = models[0].get("size")
    if size is not None and blob.stat().st_size != int(size):
        raise ValueError(
            f"{blob}: {blob.stat().st_size} bytes but the manifest says {size}; a partial pull?"
        )
    return blob


def _root_of(manifest: Path) -> Path:
    """The models folder above a manifest file (`.../models/manifests/...`)."""
    for parent in manifest.resolve().parents:
        if parent.name == "manifests":
            return parent.parent
    return models_dir()
