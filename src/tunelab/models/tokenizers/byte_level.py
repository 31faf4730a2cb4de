"""Byte-level BPE vocabularies (GPT-2 style) as tiktoken `Encoding`s.

A byte-level BPE vocabulary stores each token as text in GPT-2's bytes-to-unicode alphabet (a
printable character for every byte, e.g. "Ġ" for a space). tiktoken wants the raw bytes and uses a
token's *rank* both as its merge priority and as its id, so a vocabulary can be served by tiktoken
exactly when merged tokens' ids follow the order of the merge list. `byte_level_encoding` checks
that (and every other assumption) instead of trusting it. The file-format loaders
(`loaders/hf_tokenizer` for tokenizer.json, `loaders/gguf`) build on this module; it imports none
of them.

Pre-tokenization is one regular expression in tiktoken: GPT-2's pattern, SmolLM2's (every digit on
its own, then GPT-2's pattern) or a tokenizer's own Split regex (Llama 3, Qwen2.5).
"""

from __future__ import annotations

import logging
import unicodedata
from functools import cache

import tiktoken

log = logging.getLogger(__name__)

# `{X}` is where characters that the vocabulary cannot encode are excluded (see
# `_unencodable_class`); with nothing to exclude GPT2_TEMPLATE is tiktoken's own GPT-2 pattern.
GPT2_TEMPLATE = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}{X}]++|\s++$|\s+(?!\S)|\s"""
)
# HF `Digits(individual_digits=True)` then GPT-2's regex on each piece, as a single regex: a digit
# is always its own pre-token (so ` ?\p{N}++` can never match), and a whitespace run just before a
# digit ends its piece, so it is kept whole there as it would be at the end of the text.
SMOLLM_TEMPLATE = (
    r"""\p{N}|'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?[^\s\p{L}\p{N}{X}]++|\s++$|\s+(?![^\s\p{N}])|\s"""
)
PATTERN_TEMPLATES = {"gpt2": GPT2_TEMPLATE, "smollm": SMOLLM_TEMPLATE}

# Unicode White_Space: what `\s` matches in tiktoken's (Rust) regex engine. Python's str.isspace
# differs (it also accepts U+001C..U+001F), so it cannot stand in for this check.
_WHITE_SPACE = frozenset(
    [
        *range(0x09, 0x0E),
        0x20,
        0x85,
        0xA0,
        0x1680,
        *range(0x2000, 0x200B),
        0x2028,
        0x2029,
        0x202F,
        0x205F,
        0x3000,
    ]
)
# Conventional end-of-turn / end-of-text tokens: generation stops on any that the vocabulary has.
STOP_TOKEN_NAMES = (
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|end|>",
    "<end_of_turn>",
)


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from each byte to a printable character (openai/gpt-2 encoder.py)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    out = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + extra)
            extra += 1
    return out


@cache
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def token_bytes(token: str, source: str) -> bytes:
    """Raw bytes of a byte-level BPE token string; a character outside the alphabet is an error."""
    table = unicode_to_bytes()
    try:
        return bytes(table[c] for c in token)
    except KeyError as e:
        raise ValueError(
            f"{source}: token {token!r} has character {e.args[0]!r} outside GPT-2's byte-level "
            "alphabet; this is not a byte-level BPE vocabulary"
        ) from None


def _code_point_ranges_with_byte(b: int) -> list[tuple[int, int]]:
    """Code points whose UTF-8 encoding contains byte `b`, for bytes that are not continuations."""
    if b < 0x80:
        return [(b, b)]
    if 0xC2 <= b <= 0xDF:
        lo = (b & 0x1F) << 6
        return [(lo, lo + 0x3F)]
    if 0xE0 <= b <= 0xEF:
        lo = (b & 0x0F) << 12
        lo = max(lo, 0x800)
        hi = ((b & 0x0F) << 12) + 0xFFF
        if b == 0xED:  # U+D800..U+DFFF are surrogates, never encoded
            hi = 0xD7FF
        return [(lo, hi)]
    if 0xF0 <= b <= 0xF4:
        lo = max((b & 0x07) << 18, 0x10000)
        return [(lo, min(((b & 0x07) << 18) + 0x3FFFF, 0x10FFFF))]
    return []  # 0xC0, 0xC1, 0xF5..0xFF never occur in UTF-8


def _unencodable_class(missing: list[int], source: str) -> tuple[str, list[tuple[int, int]]]:
    """Regex class members for the characters that use a byte missing from the vocabulary.

    tiktoken panics (a Rust `no entry found for key`) on a byte it has no token for. Such
    characters can only be left out of every pre-token, which makes tiktoken skip them, as
    llama.cpp's tokenizer drops them. That is exact only when they can fall into no class but
    "other" (`[^\\s\\p{L}\\p{N}]`), which is checked here; anything else is refused.
    """
    ranges: list[tuple[int, int]] = []
    for b in missing:
        if 0x80 <= b <= 0xBF:
            raise ValueError(
                f"{source}: the vocabulary lacks the UTF-8 continuation byte 0x{b:02X}, so most "
                "non-ASCII text could not be encoded; unsupported"
            )
        ranges.extend(_code_point_ranges_with_byte(b))
    for lo, hi in ranges:
        for cp in range(lo, hi + 1):
            if cp in _WHITE_SPACE or unicodedata.category(chr(cp))[0] in "LN":
                raise ValueError(
                    f"{source}: the vocabulary lacks a byte of U+{cp:04X} "
                    f"({unicodedata.name(chr(cp), 'unnamed')}), a letter, number or space; "
                    "unsupported"
                )
    members = "".join(
        f"\\x{{{lo:X}}}" if lo == hi else f"\\x{{{lo:X}}}-\\x{{{hi:X}}}" for lo, hi in ranges
    )
    return members, ranges


def byte_level_encoding(
    *,
    name: str,
    vocab: dict[str, int],
    merges: list[tuple[str, str]],
    special_tokens: dict[str, int],
    source: str,
    pretokenizer: str = "gpt2",
    regex: str | None = None,
) -> tiktoken.Encoding:
    """A tiktoken Encoding for a byte-level BPE vocabulary (token strings in GPT-2's alphabet).

    vocab: the ordinary tokens (special ones excluded) -> id. merges: the BPE merge list, in
    priority order. pretokenizer: "gpt2", "smollm", or "regex" with `regex` given.
    Raises ValueError (naming `source`) when tiktoken could not reproduce the BPE exactly.
    """
    ranks: dict[bytes, int] = {}
    for tok, i in vocab.items():
        raw = token_bytes(tok, source)
        if raw in ranks:
            raise ValueError(f"{source}: tokens {ranks[raw]} and {i} have the same bytes {raw!r}")
        ranks[raw] = i
    _check_merge_order(vocab, merges, source)

    missing = [b for b in range(256) if bytes([b]) not in ranks]
    exclude, ranges = _unencodable_class(missing, source) if missing else ("", [])
    if pretokenizer in PATTERN_TEMPLATES:
        pattern = PATTERN_TEMPLATES[pretokenizer].replace("{X}", exclude)
    elif pretokenizer == "regex" and regex is not None:
        if missing:
            raise ValueError(
                f"{source}: the vocabulary lacks byte tokens {[hex(b) for b in missing]} and its "
                "custom pre-tokenizer regex cannot be made to skip them; unsupported"
            )
        pattern = regex
    else:
        raise ValueError(f"{source}: unknown pre-tokenizer {pretokenizer!r}")
    if missing:
        shown = ", ".join(f"U+{lo:04X}" + (f"..U+{hi:04X}" if hi > lo else "") for lo, hi in ranges)
        log.info(
            "%s: the vocabulary has no token for bytes %s; characters that need them (%s) are "
            "dropped when encoding, as llama.cpp drops them",
            source,
            " ".join(f"{b:02X}" for b in missing),
            shown or "none valid in UTF-8",
        )
    clash = sorted(set(special_tokens.values()) & set(ranks.values()))
    if clash:
        raise ValueError(f"{source}: ids {clash[:5]} are both special and ordinary tokens")
    return tiktoken.Encoding(
        name=name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=dict(special_tokens)
    )


def _check_merge_order(vocab: dict[str, int], merges: list[tuple[str, str]], source: str) -> None:
    """tiktoken merges the adjacent pair whose result has the lowest id; BPE merges the pair that
    comes first in the merge list. They agree when ids of merged tokens rise with merge order."""
    last = -1
    seen: set[str] = set()
    for n, (a, b) in enumerate(merges):
        ab = a + b
        for part in (a, b, ab):
            if part not in vocab:
                raise ValueError(f"{source}: merge {n} ({a!r} {b!r}) uses {part!r}, not in vocab")
        if not vocab[ab] > max(vocab[a], vocab[b]):
            raise ValueError(
                f"{source}: merge {n} ({a!r} {b!r}) gives id {vocab[ab]}, not above its parts' ids "
                f"{vocab[a]} and {vocab[b]}; tiktoken uses ids as merge ranks and cannot serve it"
            )
        if ab in seen:
            continue  # a later, lower-priority way to build the same token
        seen.add(ab)
        if vocab[ab] < last:
            raise ValueError(
                f"{source}: merge {n} ({a!r} {b!r}) gives id {vocab[ab]}, below an earlier merge's "
                f"id {last}; merged ids must follow merge order for tiktoken to reproduce the BPE"
            )
        last = vocab[ab]


def stop_ids_for(special_tokens: dict[str, int], eos_id: int) -> list[int]:
    """End of sequence plus every conventional end-of-turn token the vocabulary has."""
    ids = [eos_id] + [special_tokens[t] for t in STOP_TOKEN_NAMES if t in special_tokens]
    return list(dict.fromkeys(ids))
