"""A SentencePiece-style tokenizer (a `tokenizers` BPE over "▁" pieces with byte fallback: Gemma 3,
Phi-3, Llama 2) as llama.cpp's SentencePiece vocabulary (`tokenizer.ggml.model` "llama").

llama.cpp keeps no merge list for this type: it merges the adjacent pair whose joined text is a
piece with the best score (ties: the leftmost), as SentencePiece does. A `tokenizer.json`
converted from SentencePiece (transformers' converter) holds exactly that as merges: every split
of every piece into two pieces, grouped by piece in score order. Its scores are recovered from
that order (piece k of the merge list: score -k), and the file is checked to be of that kind:
every split of a piece into two normal pieces is a merge, every merge is such a split, each
piece's merges are contiguous, and every character of a piece is a piece. Otherwise llama.cpp
would tokenize differently, and the vocabulary is refused in one line naming the first
counter-example. Merges into special pieces are left out: llama.cpp matches those pieces
whole before merging.

Written as `convert_hf_to_gguf.py` writes a SentencePiece vocabulary: pieces, scores, token types
(normal 1, unknown 2, control 3, user-defined 4, unused 5 for padding rows, byte 6; added
tokens score -1000), pre-tokenizer "default", no merges, and `add_space_prefix` from the
pipeline (Metaspace or Prepend("▁") prefix: true; Gemma's Replace(" ", "▁") normalizer: false).

Where llama.cpp and the `tokenizers` Metaspace differ, ids differ, and the export says so in its
log: llama.cpp prefixes " " to text that already starts with a space and, for the "first"
scheme, to text after a special token (Metaspace does neither); a Prepend("▁") normalizer
behaves as llama.cpp does.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from tunelab.models.tokenizer import Tokenizer

log = logging.getLogger(__name__)

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
ADDED_SCORE = -1000.0
SPACE = "▁"


@dataclass(frozen=True)
class SpmVocabulary:
    tokens: list[str]
    scores: list[float]
    types: list[int]
    add_space_prefix: bool
    unk_id: int | None


def _space_prefix(data: dict[str, Any], name: str) -> bool:
    """Whether llama.cpp must prefix the text with a space (add_space_prefix), or a refusal."""
    norm, pre = data.get("normalizer"), data.get("pre_tokenizer")
    replace = {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}
    if norm == replace and (
        pre is None or (pre.get("type") == "Split" and pre.get("pattern") == {"String": " "})
    ):
        return False  # Gemma: spaces become "▁", nothing prepended
    prepend = {
        "type": "Sequence",
        "normalizers": [{"type": "Prepend", "prepend": SPACE}, replace],
    }
    if norm == prepend and pre is None:
        return True  # legacy Llama / Phi-3: "▁" before every piece of text, as llama.cpp does
    metaspace = isinstance(pre, dict) and pre.get("type") == "Metaspace"
    if norm is None and metaspace and pre.get("replacement", SPACE) == SPACE:
        scheme = pre.get("prepend_scheme", "always")
        if not pre.get("split", False) and scheme in ("first", "always", "never"):
            if scheme != "never":
                log.warning(
                    "tokenizer %r: llama.cpp prefixes a space to text that already starts with "
                    "one%s; this Metaspace pipeline does not, so ids differ there",
                    name,
                    " and to text after a special token" if scheme == "first" else "",
                )
            return scheme != "never"
    shown = json.dumps({"normalizer": norm, "pre_tokenizer": pre})[:160]
    raise ValueError(
        f"tokenizer {name!r}: pipeline {shown} has no llama.cpp SentencePiece equivalent "
        "(known: Metaspace without split, Replace(' ', '▁'), Prepend('▁') + Replace); cannot "
        "write it to GGUF"
    )


def spm_vocabulary(tokenizer: Tokenizer, vocab_size: int) -> SpmVocabulary:
    """The pieces, scores and token types of ids 0..vocab_size-1 (padding rows: [PAD<id>])."""
    enc = tokenizer.encoding
    text = getattr(enc, "_json", None)
    if text is None:
        raise ValueError(f"tokenizer {tokenizer.name!r}: not a `tokenizers` pipeline")
    data = json.loads(text)
    name = tokenizer.name
    model = data.get("model") or {}
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        raise ValueError(
            f"tokenizer {name!r}: model {model.get('type')!r} without byte fallback; llama.cpp's "
            "SentencePiece vocabulary is a BPE over pieces with <0xXX> byte fallback"
        )
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise ValueError(f"tokenizer {name!r}: model.{key}={model[key]!r} is unsupported")
    add_space_prefix = _space_prefix(data, name)
    vocab: dict[str, int] = dict(model.get("vocab") or {})
    added = {a["content"]: a for a in data.get("added_tokens") or []}
    n = max([*vocab.values(), *(a["id"] for a in added.values()), -1]) + 1
    if n > vocab_size:
        raise ValueError(
            f"tokenizer {name!r} has {n} tokens but the model only {vocab_size} embeddings"
        )
    tokens: list[str | None] = [None] * vocab_size
    types = [UNUSED] * vocab_size
    for piece, i in vocab.items():
        tokens[i], types[i] = piece, NORMAL
    unk = model.get("unk_token")
    for content, a in added.items():
        i = int(a["id"])
        if a.get("special"):
            tokens[i], types[i] = content, CONTROL
        else:  # llama.cpp matches user-defined pieces as written, with spaces
            tokens[i], types[i] = content.replace(SPACE, " "), USER_DEFINED
    for i, tok in enumerate(tokens):
        if tok is None:
            tokens[i] = f"[PAD{i}]"
        elif types[i] == NORMAL and len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):
            types[i] = BYTE
    unk_id = vocab.get(unk) if unk is not None else None
    if unk_id is not None:
        types[unk_id] = UNKNOWN
    missing = [f"<0x{b:02X}>" for b in range(256) if types[vocab.get(f"<0x{b:02X}>", 0)] != BYTE]
    if missing:
        raise ValueError(f"tokenizer {name!r}: byte piece {missing[0]} is missing")
    scores = _scores(tokens, types, model.get("merges") or [], name)
    return SpmVocabulary(tokens, scores, types, add_space_prefix, unk_id)  # type: ignore[arg-type]


def _scores(tokens: list[str], types: list[int], merges: list, name: str) -> list[float]:
    normal = {t: i for i, t in enumerate(tokens) if types[i] == NORMAL}
    special = {t for i, t in enumerate(tokens) if types[i] in (CONTROL, USER_DEFINED, UNKNOWN)}
    pairs = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]
    order: dict[str, int] = {}  # piece -> its place in the merge list's piece order
    last = None
    for a, b in pairs:
        piece = a + b
        if piece in special:
            continue  # into a special piece: its text is matched whole before any merging
        if a not in normal or b not in normal or piece not in normal:
            raise ValueError(
                f"tokenizer {name!r}: merge {a!r} + {b!r} is not of normal pieces; llama.cpp "
                "merges only into pieces of the vocabulary"
            )
        if piece != last:
            if piece in order:
                raise ValueError(
                    f"tokenizer {name!r}: the merges of {piece!r} are not contiguous; llama.cpp "
                    "ranks merges by piece score, so this merge order cannot be written"
                )
            order[piece] = len(order)
            last = piece
    merge_set = set(pairs)
    for piece in normal:
        for ch in piece:
            if ch not in normal:
                raise ValueError(
                    f"tokenizer {name!r}: piece {piece!r} holds {ch!r}, which is no piece; "
                    "llama.cpp would merge it where the BPE falls back to bytes"
                )
        for k in range(1, len(piece)):
            a, b = piece[:k], piece[k:]
            if a in normal and b in normal and (a, b) not in merge_set:
                raise ValueError(
                    f"tokenizer {name!r}: {a!r} + {b!r} -> {piece!r} is no merge; llama.cpp "
                    "merges every such pair (a SentencePiece-converted tokenizer.json lists all)"
                )
    scores = [0.0] * len(tokens)
    rest = len(order)
    for i, tok in enumerate(tokens):
        if types[i] == NORMAL:
            if tok in order:
                scores[i] = -float(order[tok])
            else:  # single characters and unreachable pieces: never a merge result
                scores[i] = -float(rest + i)
        elif types[i] in (CONTROL, USER_DEFINED, UNUSED):
            scores[i] = ADDED_SCORE
    return scores
