"""Byte-level BPE tokenizers (GPT-2 style) from Hugging Face `tokenizer.json` files, as tiktoken.

A byte-level BPE vocabulary stores each token as text in GPT-2's bytes-to-unicode alphabet (a
printable character for every byte, e.g. "Ġ" for a space). tiktoken wants the raw bytes and uses a
token's *rank* both as its merge priority and as its id, so a vocabulary can be served by tiktoken
exactly when merged tokens' ids follow the order of the merge list. `byte_level_encoding` checks
that (and every other assumption) instead of trusting it, and is shared with the GGUF loader, whose
vocabularies are the same thing in another container.

Pre-tokenization is one regular expression in tiktoken. The supported Hugging Face pre-tokenizers
map to one exactly:

* `ByteLevel(use_regex=True)` -> GPT-2's pattern;
* `Sequence[Digits(individual_digits=True), ByteLevel(use_regex=True)]` -> `SMOLLM_PATTERN`
  (every digit on its own; whitespace before a digit behaves as at the end of a piece);
* `Sequence[Split(Regex, Isolated), ByteLevel(use_regex=False)]` -> that regex.

Anything else is refused with the file and what was found, never approximated.

Two known differences from Hugging Face `tokenizers`, both outside real text:

* tiktoken takes a pre-token that is itself a vocabulary entry as one token (HF's
  `ignore_merges=true`); with `ignore_merges=false` HF could reach a different split. For
  SmolLM2 the ids agree exactly on ~50M tokens of Python sources and docs.
* Characters that need a byte the vocabulary lacks (SmolLM2: U+0004, U+0006, U+0013, U+0014,
  U+0016, U+001D and the unassigned planes 4-11) are dropped whole (logged at INFO when the tokenizer is built);
  HF drops only the missing byte and keeps the rest as stray byte tokens.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tunelab.models.tokenizer import Tokenizer
from tunelab.models.tokenizers.byte_level import (  # noqa: F401  (re-exported for older imports)
    GPT2_TEMPLATE,
    PATTERN_TEMPLATES,
    SMOLLM_TEMPLATE,
    STOP_TOKEN_NAMES,
    byte_level_encoding,
    bytes_to_unicode,
    stop_ids_for,
    token_bytes,
    unicode_to_bytes,
)

log = logging.getLogger(__name__)


# -- tokenizer.json ---------------------------------------------------------------------------


def _describe(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)[:300]


def _byte_level_step(step: Any, source: str) -> bool:
    """The `use_regex` flag of a ByteLevel pre-tokenizer step (anything else is an error)."""
    if not (isinstance(step, dict) and step.get("type") == "ByteLevel"):
        raise ValueError(f"{source}: expected a ByteLevel pre-tokenizer, found {_describe(step)}")
    if step.get("add_prefix_space", False):
        raise ValueError(f"{source}: ByteLevel(add_prefix_space=true) is unsupported")
    return bool(step.get("use_regex", True))


def _pretokenizer(pre: Any, source: str) -> tuple[str, str | None]:
    """(kind, regex) for a tokenizer.json `pre_tokenizer` section; see the module docstring."""
    unsupported = ValueError(
        f"{source}: unsupported pre_tokenizer {_describe(pre)}; tunelab maps ByteLevel, "
        "Sequence[Digits(individual_digits), ByteLevel] and Sequence[Split(Regex), "
        "ByteLevel(use_regex=false)]"
    )
    if not isinstance(pre, dict):
        raise unsupported
    if pre.get("type") == "ByteLevel":
        if not _byte_level_step(pre, source):
            raise unsupported  # no splitting at all: not a GPT-2-style tokenizer
        return "gpt2", None
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if not isinstance(steps, list) or len(steps) != 2:
        raise unsupported
    first, second = steps
    kind = first.get("type") if isinstance(first, dict) else None
    if kind == "Digits" and first.get("individual_digits") is True:
        if not _byte_level_step(second, source):
            raise unsupported
        return "smollm", None
    if kind == "Split":
        regex = (first.get("pattern") or {}).get("Regex")
        if (
            regex is None
            or first.get("behavior") != "Isolated"
            or first.get("invert", False)
            or _byte_level_step(second, source)
        ):
            raise unsupported
        return "regex", regex
    raise unsupported


def _token_name(value: Any) -> str | None:
    """tokenizer_config.json stores special tokens as strings or as {"content": ...} objects."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _has_byte_level(pre: Any) -> bool:
    if not isinstance(pre, dict):
        return False
    if pre.get("type") == "ByteLevel":
        return True
    return any(_has_byte_level(p) for p in pre.get("pretokenizers") or [])


def read_tokenizer_config(path: Path) -> dict[str, Any]:
    """tokenizer_config.json beside `path` ({} when absent); bad JSON is an error naming it."""
    cfg_path = path.with_name("tokenizer_config.json")
    if not cfg_path.exists():
        return {}
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{cfg_path}: expected a JSON object")
    return config


def chat_template_of(config: dict[str, Any], where: str) -> str | None:
    """`chat_template` of a tokenizer_config.json (a string, or named templates: "default")."""
    value = config.get("chat_template")
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        if isinstance(named.get("default"), str):
            return named["default"]
    raise ValueError(f"{where}: chat_template must be a string or a list with a 'default' one")


def template_tokens_of(config: dict[str, Any]) -> dict[str, str]:
    """The special-token strings a chat template sees (bos_token, eos_token, ...)."""
    out = {}
    for role in ("bos", "eos", "unk", "pad"):
        name = _token_name(config.get(f"{role}_token"))
        if name is not None:
            out[f"{role}_token"] = name
    return out


def tokenizer_from_hf_json(path: str | Path) -> Tokenizer:
    """A `Tokenizer` from a `tokenizer.json` (a file, or the folder holding it).

    Byte-level BPE files (a ByteLevel pre-tokenizer) become tiktoken encodings; every other file
    (SentencePiece-style: byte fallback, "▁" spaces) runs in the `tokenizers` library
    (`tunelab.models.tokenizers.library`). eos/pad/bos and the chat template come from
    `tokenizer_config.json` beside it when present; without it, eos is `<|endoftext|>` if the
    vocabulary has it, else this is an error (no guessing).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    source = str(path)
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{source}: invalid JSON at line {e.lineno}: {e.msg}") from None
    config = read_tokenizer_config(path)
    if not _has_byte_level(data.get("pre_tokenizer")):
        return _library_tokenizer(path, text, config)
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(f"{source}: model.type is {model.get('type')!r}; only 'BPE' is supported")
    for key, ok in (
        ("byte_fallback", False),
        ("continuing_subword_prefix", None),
        ("end_of_word_suffix", None),
    ):
        if model.get(key, ok) not in (ok, ""):
            raise ValueError(f"{source}: model.{key}={model[key]!r} is unsupported")
    if model.get("dropout") not in (None, 0, 0.0):
        raise ValueError(f"{source}: model.dropout={model['dropout']!r} is unsupported")
    if data.get("normalizer") is not None:
        raise ValueError(f"{source}: unsupported normalizer {_describe(data['normalizer'])}")
    kind, regex = _pretokenizer(data.get("pre_tokenizer"), source)

    vocab: dict[str, int] = dict(model.get("vocab") or {})
    merges: list[tuple[str, str]] = []
    for m in model.get("merges") or []:
        pair = m.split(" ") if isinstance(m, str) else m
        if len(pair) != 2:
            raise ValueError(f"{source}: malformed merge {m!r}")
        merges.append((pair[0], pair[1]))
    special: dict[str, int] = {}
    for added in data.get("added_tokens") or []:
        # Added tokens (special or not) are matched verbatim before pre-tokenization, like
        # tiktoken's special tokens; they leave the ordinary vocabulary.
        special[added["content"]] = int(added["id"])
        if vocab.get(added["content"]) == added["id"]:
            del vocab[added["content"]]

    def lookup(name: str) -> int | None:
        return special.get(name, vocab.get(name))

    eos, pad, bos = _role_ids(config, lookup, path, source)
    if eos is None:
        if "<|endoftext|>" not in special:
            raise ValueError(
                f"{source}: no eos_token (no tokenizer_config.json beside it) and no "
                "<|endoftext|> token; put a tokenizer_config.json with eos_token beside it"
            )
        eos = special["<|endoftext|>"]
    name = f"hf-{path.parent.name or 'tokenizer'}"
    enc = byte_level_encoding(
        name=name,
        vocab=vocab,
        merges=merges,
        special_tokens=special,
        source=source,
        pretokenizer=kind,
        regex=regex,
    )
    return Tokenizer(
        enc,
        eos_id=eos,
        pad_id=eos if pad is None else pad,
        name=name,
        stop_ids=stop_ids_for(special, eos),
        bos_id=bos,
        chat_template=chat_template_of(config, str(path.with_name("tokenizer_config.json"))),
        template_tokens=template_tokens_of(config),
    )


def _role_ids(
    config: dict[str, Any], lookup: Any, path: Path, source: str
) -> tuple[int | None, int | None, int | None]:
    """(eos, pad, bos) ids named by tokenizer_config.json; a name not in the vocabulary is an
    error naming the file."""
    out = []
    for role in ("eos", "pad", "bos"):
        name = _token_name(config.get(f"{role}_token"))
        if name is None:
            out.append(None)
            continue
        i = lookup(name)
        if i is None:
            cfg_path = path.with_name("tokenizer_config.json")
            raise ValueError(f"{cfg_path}: {role}_token {name!r} is not in {source}")
        out.append(i)
    return out[0], out[1], out[2]


def _library_tokenizer(path: Path, text: str, config: dict[str, Any]) -> Tokenizer:
    """A SentencePiece-style tokenizer.json, run by the `tokenizers` library."""
    from tunelab.models.tokenizers.library import LibraryEncoding, class_pipeline

    source = str(path)
    name = f"hf-{path.parent.name or 'tokenizer'}"
    enc = LibraryEncoding(class_pipeline(text, config, source), name, source)
    eos, pad, bos = _role_ids(config, enc.token_to_id, path, source)
    if eos is None:
        raise ValueError(
            f"{source}: no eos_token; put a tokenizer_config.json with eos_token beside it"
        )
    return Tokenizer(
        enc,
        eos_id=eos,
        pad_id=eos if pad is None else pad,
        name=name,
        stop_ids=stop_ids_for(enc.special_tokens, eos),
        bos_id=bos,
        chat_template=chat_template_of(config, str(path.with_name("tokenizer_config.json"))),
        template_tokens=template_tokens_of(config),
    )
