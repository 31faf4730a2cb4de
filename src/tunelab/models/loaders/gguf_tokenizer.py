"""The tokenizer stored in a GGUF's metadata (`tokenizer.ggml.*`), with its chat template.

Byte-level BPE (`tokenizer.ggml.model` "gpt2") becomes a tiktoken encoding: normal tokens (type 1)
become tiktoken ranks equal to their ids; control, user-defined, unknown and unused tokens become
special tokens, matched verbatim. SentencePiece vocabularies (`tokenizer.ggml.model` "llama":
Gemma 3, Phi-3, Llama 2, Mistral GGUFs) run in the `tokenizers` library as llama.cpp tokenizes
them (`gguf_spm`). Other tokenizer models are refused in one line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tunelab.models.loaders.gguf_spm import spm_tokenizer_from_metadata
from tunelab.models.tokenizer import Tokenizer
from tunelab.models.tokenizers.byte_level import byte_level_encoding, stop_ids_for

# Pre-tokenizer names llama.cpp writes in `tokenizer.ggml.pre` -> hf_tokenizer pattern kinds.
# Only patterns checked against a reference tokenization are listed; others are refused.
GGUF_PRETOKENIZERS = {
    "smollm": "smollm",
    "gpt-2": "gpt2",
    "llama-bpe": "regex",
    "llama3": "regex",
    "qwen2": "regex",
}
# llama.cpp's regexes for these names, as the Split regex of the families' tokenizer.json files
# (Llama 3: digits in runs of up to three; Qwen2/2.5/3: every digit on its own).
LLAMA3_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
QWEN2_REGEX = LLAMA3_REGEX.replace(r"\p{N}{1,3}", r"\p{N}")
GGUF_PRE_REGEX = {"llama-bpe": LLAMA3_REGEX, "llama3": LLAMA3_REGEX, "qwen2": QWEN2_REGEX}

# llama.cpp token types (llama_token_type / gguf.TokenType).
_NORMAL, _BYTE = 1, 6


def tokenizer_from_metadata(meta: Callable[..., Any], source: str) -> Tokenizer:
    """The tokenizer of a GGUF's `tokenizer.ggml.*` metadata (`meta(key, default)` reads it)."""
    model = meta("tokenizer.ggml.model")
    if model == "llama":
        return spm_tokenizer_from_metadata(meta, source)
    if model != "gpt2":
        raise ValueError(
            f"{source}: tokenizer model {model!r} is not supported; tunelab reads byte-level "
            "BPE ('gpt2') and SentencePiece ('llama')"
        )
    pre = meta("tokenizer.ggml.pre", None)
    if pre not in GGUF_PRETOKENIZERS:
        raise ValueError(
            f"{source}: pre-tokenizer {pre!r} is not supported; known: "
            f"{', '.join(sorted(GGUF_PRETOKENIZERS))}"
        )
    tokens = meta("tokenizer.ggml.tokens")
    types = meta("tokenizer.ggml.token_type")
    merges_raw = meta("tokenizer.ggml.merges")
    if len(types) != len(tokens):
        raise ValueError(f"{source}: {len(tokens)} tokens but {len(types)} token types")
    vocab: dict[str, int] = {}
    special: dict[str, int] = {}
    for i, (tok, kind) in enumerate(zip(tokens, types, strict=True)):
        if kind == _BYTE:
            raise ValueError(f"{source}: token {i} {tok!r} is a BYTE token, unexpected in 'gpt2'")
        table = vocab if kind == _NORMAL else special
        if tok in table:
            raise ValueError(f"{source}: tokens {table[tok]} and {i} are both {tok!r}")
        table[tok] = i
    merges: list[tuple[str, str]] = []
    for m in merges_raw:
        a, sep, b = m.partition(" ")
        if not sep or " " in b:
            raise ValueError(f"{source}: malformed merge {m!r}")
        merges.append((a, b))

    name = "smollm2" if pre == "smollm" else f"gguf-{pre}"
    enc = byte_level_encoding(
        name=name,
        vocab=vocab,
        merges=merges,
        special_tokens=special,
        source=source,
        pretokenizer=GGUF_PRETOKENIZERS[pre],
        regex=GGUF_PRE_REGEX.get(pre),
    )

    def token_id(field: str) -> int | None:
        value = meta(f"tokenizer.ggml.{field}", None)
        if value is None:
            return None
        if not 0 <= int(value) < len(tokens):
            raise ValueError(f"{source}: tokenizer.ggml.{field}={value} is out of range")
        return int(value)

    eos = token_id("eos_token_id")
    if eos is None:
        if "<|endoftext|>" not in special:
            raise ValueError(f"{source}: no tokenizer.ggml.eos_token_id and no <|endoftext|>")
        eos = special["<|endoftext|>"]
    pad = token_id("padding_token_id")
    stops = stop_ids_for(special, eos)
    for extra in ("eot_token_id", "eom_token_id"):
        if (i := token_id(extra)) is not None and i not in stops:
            stops.append(i)
    bos = token_id("bos_token_id")
    template = meta("tokenizer.chat_template", None)
    return Tokenizer(
        enc,
        eos_id=eos,
        pad_id=eos if pad is None else pad,
        name=name,
        stop_ids=stops,
        bos_id=bos,
        chat_template=None if template is None else str(template),
        template_tokens=_template_tokens(tokens, eos, bos),
    )


def _template_tokens(tokens: list[str], eos: int, bos: int | None) -> dict[str, str]:
    """bos_token/eos_token strings for the chat template (as llama.cpp passes them)."""
    out = {"eos_token": tokens[eos]}
    if bos is not None:
        out["bos_token"] = tokens[bos]
    return out
