"""SentencePiece BPE vocabularies given as pieces + scores (no merge list), as a `tokenizer.json`.

llama.cpp tokenizes such a vocabulary (its "SPM" type) without merges: it starts from the
characters of the text and keeps joining the adjacent pair whose concatenation is a vocabulary
piece with the highest score (ties: the leftmost pair), then spells every character that never
became a piece as `<0xXX>` byte tokens. That is byte-fallback BPE whose merge list holds every
split of every piece into two pieces, ranked by the score of the piece they form; `merges_from_scores`
builds that list, and `spm_tokenizer_json` the `tokenizers` pipeline around it (the BPE model with
byte fallback, " " -> "▁", the "▁" prefix of every text fragment when the vocabulary asks for it,
and added tokens for the pieces matched whole before BPE).

Ties that a merge list cannot express (two different pieces with the same score both formed by
merges) are refused by the caller; see `score_ties`.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

SPACE = "▁"


@contextmanager
def _no_gc() -> Iterator[None]:
    """Millions of small tuples: the cyclic collector would rescan them again and again."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def byte_renames(tokens: Sequence[str]) -> dict[int, str]:
    """{id of a `<0xXX>` byte piece: its character} for every ASCII character that occurs inside
    longer pieces but is no piece itself.

    llama.cpp joins any two adjacent symbols whose text is a piece, so such a character still
    merges (Gemma's "\\t" into "\\t..." pieces) and, left alone, falls back to its one byte. A
    BPE model does both when its byte piece is spelled as the character: the byte is only ever
    needed for that character, since no longer UTF-8 sequence contains an ASCII byte.
    """
    index = {t: i for i, t in enumerate(tokens)}
    out: dict[int, str] = {}
    for piece in tokens:
        if len(piece) < 2:
            continue
        for ch in piece:
            if ch not in index and ord(ch) < 128:
                byte = index.get(f"<0x{ord(ch):02X}>")
                if byte is not None:
                    out[byte] = ch
    return out


def merging_orphan(tokens: Sequence[str]) -> tuple[str, str] | None:
    """(piece, character) where llama.cpp could form the piece from a character that is not a
    piece, or None; a BPE model with byte fallback cannot."""
    known = set(tokens)
    for piece in tokens:
        n = len(piece)
        if n < 2:
            continue
        for part, other in ((piece[0], piece[1:]), (piece[-1], piece[:-1])):
            if part not in known and (other in known or len(other) == 1):
                return piece, part
    return None


def merges_from_scores(tokens: Sequence[str], scores: Sequence[float]) -> list[list[str]]:
    """Every [left, right] split of every piece into two pieces, best piece score first.

    Equal scores are ordered as transformers orders the merges it derives from a SentencePiece
    model: longer left part first, then id (see `score_ties` for when that order matters).
    """
    index = dict.fromkeys(tokens)
    with _no_gc():
        found = []
        for i, piece in enumerate(tokens):
            n = len(piece)
            if n < 2:
                continue
            score = -float(scores[i])
            for k in range(1, n):
                if piece[:k] in index and piece[k:] in index:
                    found.append((score, -k, k - n, i))
        found.sort()
        return [[tokens[i][:-neg_k], tokens[i][-neg_k:]] for _, neg_k, _, i in found]


def score_ties(
    tokens: Sequence[str],
    scores: Sequence[float],
    merges: Sequence[Sequence[str]],
    ids: Iterable[int],
) -> tuple[int, int] | None:
    """Two of `ids` that `merges` form and that share a score, or None.

    llama.cpp breaks a tie between equal-scored candidate pairs by position (leftmost first); a
    ranked merge list cannot, so such a vocabulary is not reproduced exactly.
    """
    index = {t: i for i, t in enumerate(tokens)}
    formed = {index[left + right] for left, right in merges}  # a merge forms a piece
    seen: dict[float, int] = {}
    for i in ids:
        if i not in formed:
            continue
        score = float(scores[i])
        if score in seen:
            return seen[score], i
        seen[score] = i
    return None


def overlapping_pieces(contents: Sequence[str]) -> tuple[str, str] | None:
    """Two pieces matched whole where the end of one is the start of the other, or None.

    llama.cpp cuts such pieces out longest first; `tokenizers` (and tunelab's template text)
    leftmost first: "ab" + "bcd" split "abcd" differently. Runs of one character (Gemma's
    white-space pieces) cut a run the same way both ways and are not reported.
    """
    starts: dict[str, str] = {}
    for c in contents:
        for k in range(1, len(c)):
            starts.setdefault(c[:k], c)
    for a in contents:
        for k in range(1, len(a)):
            b = starts.get(a[k:])
            if b is not None and not (len(set(a)) == 1 and set(a) == set(b)):
                return a, b
    return None


@dataclass
class AddedPiece:
    """A piece matched whole in the text before BPE (llama.cpp's control, unknown and
    user-defined tokens)."""

    id: int
    content: str
    special: bool
    rstrip: bool = False


def spm_tokenizer_json(
    tokens: Sequence[str],
    merges: Sequence[Sequence[str]],
    added: Sequence[AddedPiece],
    unk: str | None,
    add_space_prefix: bool,
) -> dict[str, Any]:
    """The `tokenizer.json` (as a dict) that tokenizes as llama.cpp's SPM tokenizer does.

    `merges`: `merges_from_scores`. `add_space_prefix`: every text fragment (the whole text, or
    the text after a token matched whole) starts with "▁", as llama.cpp prepends " " to such
    fragments.
    """
    vocab = {t: i for i, t in enumerate(tokens)}
    replace = {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}
    steps: list[dict[str, Any]] = [replace]
    if add_space_prefix:
        steps.insert(0, {"type": "Prepend", "prepend": SPACE})
    decoder: list[dict[str, Any]] = [
        {"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
        {"type": "ByteFallback"},
        {"type": "Fuse"},
    ]
    if add_space_prefix:
        decoder.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    data = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": a.id,
                "content": a.content,
                "single_word": False,
                "lstrip": False,
                "rstrip": a.rstrip,
                "normalized": False,
                "special": a.special,
            }
            for a in sorted(added, key=lambda a: a.id)
        ],
        "normalizer": {"type": "Sequence", "normalizers": steps},
        "pre_tokenizer": None,
        "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": decoder},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": unk,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": merges,
        },
    }
    return data
