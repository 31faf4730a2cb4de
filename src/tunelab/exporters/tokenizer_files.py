"""A tunelab (tiktoken) byte-level BPE tokenizer as Hugging Face and GGUF tokenizer data.

tiktoken keeps ranks (token bytes -> id) and merges by rank; Hugging Face `tokenizer.json` and
llama.cpp keep a vocabulary plus an ordered merge list. The merge list is recovered from the
ranks the way the BPE itself would build each token: run BPE on the token's bytes using only
lower ranks; when that ends in exactly two parts, they are the token's merge. Ordered by rank,
that is the original list for GPT-2 (50,000 merges) and SmolLM2 (48,900, equal to the merges in
its GGUF). `ignore_merges: true` makes Hugging Face take a pre-token that is itself a vocabulary
entry whole, as tiktoken does.

The pre-tokenizer regex maps back to what `loaders/hf_tokenizer` reads: GPT-2's pattern ->
`ByteLevel`, SmolLM2's -> `Sequence[Digits(individual_digits), ByteLevel]`, any other ->
`Sequence[Split(Regex, Isolated), ByteLevel(use_regex=false)]`. Vocabularies missing some byte
tokens (SmolLM2) keep the difference documented in `loaders/hf_tokenizer`: tunelab drops a
character that needs a missing byte, Hugging Face drops only the byte.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tunelab.models.tokenizer import Tokenizer
from tunelab.models.tokenizers.byte_level import PATTERN_TEMPLATES, bytes_to_unicode

# GGUF names of the pre-tokenizers (`tokenizer.ggml.pre`) that tunelab's GGUF loader reads back.
GGUF_PRE = {"gpt2": "gpt-2", "smollm": "smollm"}
# llama.cpp token types.
NORMAL, CONTROL, UNUSED = 1, 3, 5


@dataclass(frozen=True)
class Vocabulary:
    """Every id of the model's vocabulary as (token string, is special), plus the merges."""

    tokens: list[str]
    special: list[bool]
    merges: list[tuple[str, str]]
    pretokenizer: str  # "gpt2", "smollm" or "regex"
    pattern: str


def _bpe(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        best, at = None, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and (best is None or rank < best):
                best, at = rank, i
        if best is None or best >= max_rank:
            break
        parts[at : at + 2] = [parts[at] + parts[at + 1]]
    return parts


def _merge_of(ranks: dict[bytes, int], token: bytes, rank: int) -> tuple[bytes, bytes] | None:
    # Fast path: a single split into two lower-ranked tokens must be the merge.
    splits = []
    for k in range(1, len(token)):
        a, b = ranks.get(token[:k]), ranks.get(token[k:])
        if a is not None and b is not None and a < rank and b < rank:
            splits.append((token[:k], token[k:]))
    if len(splits) == 1:
        return splits[0]
    parts = _bpe(ranks, token, rank)
    return (parts[0], parts[1]) if len(parts) == 2 else None


_CACHE: dict[int, tuple[Any, Vocabulary]] = {}


def pretokenizer_kind(pattern: str) -> str:
    """'gpt2' or 'smollm' when the regex is one of the loader's templates (any excluded
    characters filled in), else 'regex'."""
    for kind, template in PATTERN_TEMPLATES.items():
        head, _, tail = template.partition("{X}")
        fits = len(pattern) >= len(head) + len(tail)
        if fits and pattern.startswith(head) and pattern.endswith(tail):
            return kind
    return "regex"


def vocabulary(tokenizer: Tokenizer, vocab_size: int) -> Vocabulary:
    """The token strings (GPT-2 byte alphabet) of ids 0..vocab_size-1 and the merge list.

    Ids the tokenizer never produces (an embedding padded past the vocabulary) become
    `[PAD<id>]` special tokens, as llama.cpp's converter writes them.
    """
    enc = tokenizer.encoding
    key = id(enc)
    if key in _CACHE and _CACHE[key][0] is enc and len(_CACHE[key][1].tokens) == vocab_size:
        return _CACHE[key][1]
    if enc.n_vocab > vocab_size:
        raise ValueError(
            f"tokenizer {tokenizer.name!r} has {enc.n_vocab} tokens but the model only "
            f"{vocab_size} embeddings; cannot export a vocabulary the model cannot embed"
        )
    b2u = bytes_to_unicode()

    def text(raw: bytes) -> str:
        return "".join(b2u[b] for b in raw)

    ranks: dict[bytes, int] = enc._mergeable_ranks
    tokens: list[str | None] = [None] * vocab_size
    special = [False] * vocab_size
    for raw, i in ranks.items():
        tokens[i] = text(raw)
    for name, i in enc._special_tokens.items():
        tokens[i], special[i] = name, True
    for i, tok in enumerate(tokens):
        if tok is None:
            tokens[i], special[i] = f"[PAD{i}]", True
    merges = []
    for raw, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(raw) < 2:
            continue
        pair = _merge_of(ranks, raw, rank)
        if pair is not None:  # unreachable by merges: matched whole only (ignore_merges)
            merges.append((text(pair[0]), text(pair[1])))
    pattern = enc._pat_str
    vocab = Vocabulary(tokens, special, merges, pretokenizer_kind(pattern), pattern)  # type: ignore[arg-type]
    _CACHE[key] = (enc, vocab)
    return vocab


def _pre_tokenizer_json(vocab: Vocabulary) -> dict[str, Any]:
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True}
    if vocab.pretokenizer == "gpt2":
        return {**byte_level, "use_regex": True}
    if vocab.pretokenizer == "smollm":
        return {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                {**byte_level, "use_regex": True},
            ],
        }
    return {
        "type": "Sequence",
        "pretokenizers": [
            {
                "type": "Split",
                "pattern": {"Regex": vocab.pattern},
                "behavior": "Isolated",
                "invert": False,
            },
            {**byte_level, "use_regex": False},
        ],
    }


def tokenizer_json(vocab: Vocabulary) -> dict[str, Any]:
    """A Hugging Face `tokenizer.json` (byte-level BPE) reproducing tunelab's ids."""
    added = [
        {
            "id": i,
            "content": tok,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, (tok, is_special) in enumerate(zip(vocab.tokens, vocab.special, strict=True))
        if is_special
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": _pre_tokenizer_json(vocab),
        "post_processor": None,
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": {tok: i for i, tok in enumerate(vocab.tokens)},
            "merges": [list(m) for m in vocab.merges],
        },
    }


def library_tokenizer(tokenizer: Tokenizer) -> tuple[str, Callable[[int], str]]:
    """(tokenizer.json text, id -> token) of a `tokenizers`-library tokenizer, as tunelab runs it
    (the pipeline after transformers' class adjustments, see models/tokenizers/library.py)."""
    enc = tokenizer.encoding
    inner = getattr(enc, "_tok", None)
    text = getattr(enc, "_json", None)
    if inner is None or text is None:
        raise ValueError(f"tokenizer {tokenizer.name!r}: cannot be written as tokenizer.json")
    return text, inner.id_to_token


def tokenizer_config(
    token: Callable[[int], str], tokenizer: Tokenizer, chat_template: str, cfg: Any
) -> dict[str, Any]:
    """`tokenizer_config.json`: special tokens, no BOS/EOS added when encoding, the template."""

    def text(i: int | None) -> str | None:
        return None if i is None else token(i)

    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": cfg.context_length,
        "bos_token": text(tokenizer.bos_id),
        "eos_token": text(tokenizer.eos_id),
        "pad_token": text(tokenizer.pad_id),
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "chat_template": chat_template,
    }
