"""`ollama:` model names resolve through a fake Ollama store built here to the GGUF blob."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from tests.models.gguf_fixtures import hf_model, write_gguf
from tests.models.test_gguf import _tiny_vocab
from tunelab.models.api import load_model
from tunelab.models.loaders.ollama import manifest_path, resolve


def _store(root: Path, name: str, tag: str, blob: bytes, ns: str = "library", **extra) -> Path:
    digest = hashlib.sha256(blob).hexdigest()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / f"sha256-{digest}").write_bytes(blob)
    layers = [
        {
            "mediaType": "application/vnd.ollama.image.model",
            "digest": f"sha256:{digest}",
            "size": len(blob),
        },
        {
            "mediaType": "application/vnd.ollama.image.template",
            "digest": "sha256:" + "0" * 64,
            "size": 10,
        },
        *extra.get("layers", []),
    ]
    manifest = root / "manifests" / "registry.ollama.ai" / ns / name / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": layers}))
    return manifest


@pytest.fixture(scope="module")
def gguf_bytes(tmp_path_factory) -> tuple[bytes, torch.nn.Module]:
    ref = hf_model("qwen2", len(_tiny_vocab()[0]))
    path = write_gguf(ref, "qwen2", tmp_path_factory.mktemp("g") / "m.gguf")
    return path.read_bytes(), ref


def test_names_map_to_manifests(tmp_path) -> None:
    m = tmp_path / "manifests" / "registry.ollama.ai"
    assert manifest_path("qwen2.5:0.5b", tmp_path) == m / "library" / "qwen2.5" / "0.5b"
    assert manifest_path("smollm2", tmp_path) == m / "library" / "smollm2" / "latest"
    assert manifest_path("me/tiny:q8", tmp_path) == m / "me" / "tiny" / "q8"
    assert (
        manifest_path("host.io/me/tiny:q8", tmp_path)
        == tmp_path / "manifests" / "host.io" / "me" / "tiny" / "q8"
    )
    with pytest.raises(ValueError, match="not a model name"):
        manifest_path("../x", tmp_path)


def test_load_model_from_the_store(tmp_path, monkeypatch, gguf_bytes) -> None:
    blob, ref = gguf_bytes
    manifest = _store(tmp_path, "qwen2.5", "0.5b", blob)
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path))
    model, tok = load_model("ollama:qwen2.5:0.5b")
    ids = torch.tensor([[3, 70, 100, 7, 250]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids), ref(ids).logits, rtol=1e-4, atol=1e-4)
    assert tok.encode(" the") == [3 + 256 + 2]
    assert resolve(f"ollama:{manifest}") == resolve("ollama:qwen2.5:0.5b")  # a manifest path


def test_store_problems_are_one_line(tmp_path, monkeypatch, gguf_bytes) -> None:
    blob, _ = gguf_bytes
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no manifest for 'nope:1b'"):
        resolve("ollama:nope:1b")
    manifest = _store(tmp_path, "cut", "latest", blob)
    (tmp_path / "blobs" / f"sha256-{hashlib.sha256(blob).hexdigest()}").write_bytes(blob[:100])
    with pytest.raises(ValueError, match="manifest says"):
        resolve("ollama:cut")
    adapter = {"mediaType": "application/vnd.ollama.image.adapter", "digest": "sha256:" + "1" * 64}
    _store(tmp_path, "lora", "latest", blob, layers=[adapter])
    with pytest.raises(ValueError, match="LoRA adapter layer") as err:
        resolve("ollama:lora")
    assert "\n" not in str(err.value)
    manifest.write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON manifest"):
        resolve("ollama:cut")
