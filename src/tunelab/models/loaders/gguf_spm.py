"""SentencePiece vocabularies in GGUF (`tokenizer.ggml.model` "llama": Gemma 3, Phi-3/3.5,
Llama 2, Mistral), read the way llama.cpp reads and tokenizes them.

What llama.cpp's `convert_hf_to_gguf.py` writes (`_create_vocab_sentencepiece`, Gemma3 and Phi3
classes): the pieces of `tokenizer.model` ("▁" for spaces, `<0xXX>` byte pieces), their scores,
token types (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte; added tokens get
-1000 and control or user-defined, user-defined ones with "▁" written back as " "), pre-tokenizer
"default", special ids, `add_bos_token`/`add_eos_token`, the chat template, and no merges. Gemma 3
also writes `tokenizer.ggml.add_space_prefix = false`; Phi-3 and Llama 2 write nothing, and
llama.cpp then prefixes (true).

How llama.cpp's `llama-vocab.cpp` tokenizes them, reproduced here in the `tokenizers` library
(`tunelab.models.tokenizers.spm`):

* control, unknown and user-defined pieces are cut out of the text first, longest first
  (user-defined ones even from user text), and "eot"/"eog"-looking pieces that are not control
  are made control, as llama.cpp does;
* every remaining fragment gets a " " prefix when `add_space_prefix` (the whole text and each
  fragment after a matched piece), then " " -> "▁";
* BPE by piece score (a merge list of every split, best score first) with byte fallback;
* a GGUF whose `general.name` contains "phi-3"/"phi3" gets llama.cpp's Phi-3 attribute: matched
  pieces take the white space after them (rstrip), except `<unk>`, `<s>`, `<|endoftext|>`.
  (llama.cpp strips ASCII white space there; the Unicode White_Space that `tokenizers` and HF's
  Phi-3 tokenizer strip differs only for non-ASCII spaces right after a marker.)

Merges stored in the file are ignored, as llama.cpp ignores them for this type. (transformers'
own GGUF reader ranks Gemma's merges by piece id instead of score, to match Gemma's HF
tokenizer.json; where a file's scores and ids disagree, this reader follows llama.cpp.) Refused in one line:
missing scores or token types, a pre-tokenizer other than "default", a precompiled normalizer,
`remove_extra_whitespaces`, missing byte pieces, duplicate or empty pieces, two mergeable normal
pieces with the same score (llama.cpp breaks that tie by position; a merge list cannot), and a
piece llama.cpp can form from a multi-byte character that is no piece, and control or
user-defined pieces that overlap (llama.cpp cuts them out longest first, `tokenizers` leftmost). (An ASCII character that
is no piece but sits inside pieces, like Gemma's "\\t", spells its byte piece in the BPE model.)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from tunelab.models.tokenizer import Tokenizer
from tunelab.models.tokenizers.byte_level import stop_ids_for
from tunelab.models.tokenizers.library import LibraryEncoding
from tunelab.models.tokenizers.spm import (
    AddedPiece,
    byte_renames,
    merges_from_scores,
    merging_orphan,
    overlapping_pieces,
    score_ties,
    spm_tokenizer_json,
)

log = logging.getLogger(__name__)

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# Pieces llama.cpp (llama-vocab.cpp) turns into control tokens by their text (eot, eom, eog, fim).
LLAMA_CPP_CONTROL_NAMES = frozenset(
    [
        "<|eot_id|>",
        "<|im_end|>",
        "<|end|>",
        "<end_of_turn>",
        "<|endoftext|>",
        "<|end_of_text|>",
        "<EOT>",
        "_<EOT>",
        "[EOT]",
        "[EOS]",
        "<｜end▁of▁sentence｜>",
        "<end_of_utterance>",
        "<|eom_id|>",
        "</s>",
        "<eos>",
        "<|return|>",
        "<|call|>",
        "<|flush|>",
        "<|calls|>",
        "<turn|>",
        "<|tool_response>",
        "[e~[",
        "<|fim_prefix|>",
        "<fim-prefix>",
        "<fim_prefix>",
        "<｜fim▁begin｜>",
        "<PRE>",
        "▁<PRE>",
        "<|code_prefix|>",
        "<|prefix|>",
        "<|fim_suffix|>",
        "<fim-suffix>",
        "<fim_suffix>",
        "<｜fim▁hole｜>",
        "<SUF>",
        "▁<SUF>",
        "<|code_suffix|>",
        "<|suffix|>",
        "<|fim_middle|>",
        "<fim-middle>",
        "<fim_middle>",
        "<｜fim▁end｜>",
        "<MID>",
        "▁<MID>",
        "<|code_middle|>",
        "<|middle|>",
        "<|fim_pad|>",
        "<fim-pad>",
        "<fim_pad>",
        "<PAD>",
        "[PAD]",
        "<|fim_repo|>",
        "<|repo_name|>",
        "<fim-repo>",
        "<REPO>",
        "<reponame>",
        "<|file_sep|>",
    ]
)
PHI3_NO_RSTRIP = ("<unk>", "<s>", "<|endoftext|>")
# llama.cpp's ids when a SentencePiece GGUF names none.
SPM_DEFAULT_IDS = {"bos_token_id": 1, "eos_token_id": 2, "unknown_token_id": 0}


def spm_tokenizer_from_metadata(meta: Callable[..., Any], source: str) -> Tokenizer:
    """The tokenizer of a GGUF whose `tokenizer.ggml.model` is "llama"."""
    pre = meta("tokenizer.ggml.pre", None)
    if pre not in (None, "default"):
        raise ValueError(
            f"{source}: SentencePiece vocabulary with pre-tokenizer {pre!r}; llama.cpp and "
            "tunelab read only 'default'"
        )
    if meta("tokenizer.ggml.precompiled_charsmap", None) is not None:
        raise ValueError(f"{source}: tokenizer.ggml.precompiled_charsmap is not supported")
    if meta("tokenizer.ggml.remove_extra_whitespaces", False):
        raise ValueError(f"{source}: tokenizer.ggml.remove_extra_whitespaces=true is not supported")
    tokens = [str(t) for t in meta("tokenizer.ggml.tokens")]
    scores = meta("tokenizer.ggml.scores", None)
    types = meta("tokenizer.ggml.token_type", None)
    if scores is None or types is None:
        missing = "tokenizer.ggml.scores" if scores is None else "tokenizer.ggml.token_type"
        raise ValueError(f"{source}: SentencePiece vocabulary without {missing}")
    if len(scores) != len(tokens) or len(types) != len(tokens):
        raise ValueError(
            f"{source}: {len(tokens)} tokens, {len(scores)} scores, {len(types)} token types"
        )
    seen: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        if not tok:
            raise ValueError(f"{source}: token {i} is empty")
        if tok in seen:
            raise ValueError(f"{source}: tokens {seen[tok]} and {i} are both {tok!r}")
        seen[tok] = i
    for b in range(256):
        if f"<0x{b:02X}>" not in seen:
            raise ValueError(
                f"{source}: byte piece <0x{b:02X}> is missing; byte fallback cannot be reproduced"
            )
    types = [int(t) for t in types]
    for i, tok in enumerate(tokens):
        if tok in LLAMA_CPP_CONTROL_NAMES and types[i] in (NORMAL, USER_DEFINED, UNUSED):
            types[i] = CONTROL
    renames = byte_renames(tokens)
    pieces = [renames.get(i, t) for i, t in enumerate(tokens)]  # the BPE model's spelling
    index = set(pieces)
    for i in renames:
        t = tokens[i]
        if any(t[:k] in index and t[k:] in index for k in range(1, len(t))):
            raise ValueError(f"{source}: byte piece {t!r} can be formed by merges; unsupported")
    orphan = merging_orphan(pieces)
    if orphan is not None:
        raise ValueError(
            f"{source}: piece {orphan[0]!r} can be formed from {orphan[1]!r}, which is no piece "
            "and more than one byte; llama.cpp's merge of it cannot be reproduced"
        )
    merges = merges_from_scores(pieces, scores)
    tie = score_ties(pieces, scores, merges, (i for i, t in enumerate(types) if t == NORMAL))
    if tie is not None:
        a, b = tie
        raise ValueError(
            f"{source}: pieces {a} {tokens[a]!r} and {b} {tokens[b]!r} share score {scores[a]}; "
            "llama.cpp breaks that tie by position, which a merge list cannot reproduce"
        )

    name = str(meta("general.name", "") or "").lower()
    phi3 = "phi-3" in name or "phi3" in name
    added = []
    for i, (tok, kind) in enumerate(zip(tokens, types, strict=True)):
        if kind in (CONTROL, UNKNOWN, USER_DEFINED):
            rstrip = phi3 and tok not in PHI3_NO_RSTRIP
            added.append(AddedPiece(i, tok, special=kind != USER_DEFINED, rstrip=rstrip))

    overlap = overlapping_pieces([a.content for a in added])
    if overlap is not None:
        raise ValueError(
            f"{source}: pieces {overlap[0]!r} and {overlap[1]!r} overlap; llama.cpp cuts the "
            "longer one out first, which cannot be reproduced"
        )

    def token_id(field: str) -> int | None:
        value = meta(f"tokenizer.ggml.{field}", None)
        if value is None:
            default = SPM_DEFAULT_IDS.get(field)
            return default if default is not None and default < len(tokens) else None
        if not 0 <= int(value) < len(tokens):
            raise ValueError(f"{source}: tokenizer.ggml.{field}={value} is out of range")
        return int(value)

    unk = token_id("unknown_token_id")
    add_space_prefix = bool(meta("tokenizer.ggml.add_space_prefix", True))
    if meta("tokenizer.ggml.merges", None) is not None:
        log.info("%s: SentencePiece vocabulary: merges ignored (ranked by score)", source)
    data = spm_tokenizer_json(
        pieces, merges, added, None if unk is None else tokens[unk], add_space_prefix
    )
    enc = LibraryEncoding(json.dumps(data, ensure_ascii=False), "gguf-spm", source, data=data)
    eos = token_id("eos_token_id")
    if eos is None:
        raise ValueError(f"{source}: no tokenizer.ggml.eos_token_id")
    stops = stop_ids_for(enc.special_tokens, eos)
    for extra in ("eot_token_id", "eom_token_id"):
        if (i := token_id(extra)) is not None and i not in stops:
            stops.append(i)
    pad = token_id("padding_token_id")
    bos = token_id("bos_token_id")
    template = meta("tokenizer.chat_template", None)
    template_tokens = {"eos_token": tokens[eos]}
    if bos is not None:
        template_tokens["bos_token"] = tokens[bos]
    return Tokenizer(
        enc,
        eos_id=eos,
        pad_id=eos if pad is None else pad,
        name="gguf-spm",
        stop_ids=stops,
        bos_id=bos,
        chat_template=None if template is None else str(template),
        template_tokens=template_tokens,
    )
