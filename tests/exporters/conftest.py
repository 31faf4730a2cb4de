"""Tiny tunelab checkpoints to export (real tokenizers, few parameters)."""

from __future__ import annotations

import collections
import functools
from pathlib import Path

import pytest
import regex
import tiktoken
import torch

from tunelab.models.config import Config
from tunelab.models.decoder import Decoder
from tunelab.models.loaders.checkpoint import checkpoint_metadata
from tunelab.models.tokenizer import GPT2_PATTERN, Tokenizer, gpt2_tokenizer

# Prose, code, digits and whitespace runs: where tokenizer mistakes show.
TEXTS = [
    "The quick brown fox jumps over the lazy dog. It's 3:45pm on 2024-01-15, and we'll ship "
    "v2.10.3 (build 98765) by   12 o'clock.",
    "def f(x):\n    return x ** 2 + 10\n\n\n    # 4 spaces then 1234\n\t\tprint('\\n')  \n",
    "Ceci n'est pas une pipe — ça coûte 15 €. Größe: 3×4 m². 東京は日本の首都です。 🎉🎉 naïve",
    "   leading spaces\n\n\n1. first\n  2. second\r\n 3) third 4th 5TH ١٢٣ ٤٥",
]


@functools.cache
def tiny_tokenizer() -> Tokenizer:
    """A byte-level BPE of 256 bytes + 200 merges learned from TEXTS, GPT-2's pre-tokenizer and
    ChatML's special tokens: tunelab's tokenizer machinery at a size that exports instantly."""
    words: collections.Counter[tuple[bytes, ...]] = collections.Counter()
    for text in TEXTS * 3 + ["Hello world, hello tokenizer. Say hi!"]:
        for piece in regex.findall(GPT2_PATTERN, text):
            words[tuple(bytes([b]) for b in piece.encode())] += 1
    ranks = {bytes([b]): b for b in range(256)}
    for _ in range(200):
        pairs: collections.Counter[tuple[bytes, bytes]] = collections.Counter()
        for word, n in words.items():
            for a, b in zip(word, word[1:], strict=False):
                pairs[(a, b)] += n
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        ranks[a + b] = len(ranks)
        merged = collections.Counter()
        for word, n in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == (a, b):
                    out.append(a + b)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    n = len(ranks)
    special = {"<|endoftext|>": n, "<|im_start|>": n + 1, "<|im_end|>": n + 2}
    enc = tiktoken.Encoding(
        name="tiny-bpe", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=special
    )
    return Tokenizer(enc, eos_id=n, pad_id=n, name="tiny-bpe", stop_ids=[n, n + 2])


def save_checkpoint(model: Decoder, tokenizer: Tokenizer, style: str, path: Path) -> Path:
    ckpt = {
        "tunelab": checkpoint_metadata(model, tokenizer, style),
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
    }
    torch.save(ckpt, path)
    return path


def tiny_model(preset: str, seed: int = 0, **overrides) -> Decoder:
    torch.manual_seed(seed)
    model = Decoder(Config.from_preset(preset, **overrides)).eval()
    with torch.no_grad():  # norms away from 1 and non-zero biases: every tensor matters
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture
def tiny_ckpt(tmp_path):
    """(model, tokenizer, checkpoint path) for a tiny preset with the tiny tokenizer (459 tokens,
    embeddings padded to 512) or GPT-2's (`gpt2=True`)."""

    def make(preset: str = "tiny-llama", style: str = "chatml", gpt2: bool = False, **overrides):
        tok = gpt2_tokenizer() if gpt2 else tiny_tokenizer()
        overrides.setdefault("vocab_size", 50257 if gpt2 else 512)
        model = tiny_model(preset, **overrides)
        return model, tok, save_checkpoint(model, tok, style, tmp_path / f"{preset}.ckpt")

    return make
