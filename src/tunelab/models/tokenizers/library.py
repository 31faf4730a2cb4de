"""SentencePiece-style vocabularies through the `tokenizers` library (Gemma 3, Phi-3, Llama 2,
Mistral).

These vocabularies (BPE over characters with "▁" for spaces and `<0xXX>` byte-fallback tokens)
cannot be expressed in tiktoken, whose BPE runs over bytes. The `tokenizers` library is the engine
of Hugging Face's fast tokenizers (Rust, no transformers needed), so a `tokenizer.json` runs here
exactly as `AutoTokenizer` runs it, with one adjustment made the way transformers makes it: for
`tokenizer_class` LlamaTokenizer and GemmaTokenizer, transformers 5 replaces the file's normalizer,
pre-tokenizer and decoder with the class's own (Metaspace with the `legacy`/`add_prefix_space`
prepend scheme; Replace(" ", "▁")), and `class_pipeline` does the same.

Refused, in one line naming what: BPE dropout (random), `single_word` special tokens, special
tokens matched after a normalizer that changes them, and files the library cannot parse.
"""

from __future__ import annotations

import json
from typing import Any

from tokenizers import Tokenizer as RustTokenizer
from tokenizers import decoders, normalizers, pre_tokenizers

LLAMA_CLASSES = ("LlamaTokenizer", "LlamaTokenizerFast", "CodeLlamaTokenizer")
GEMMA_CLASSES = ("GemmaTokenizer", "GemmaTokenizerFast")


def _load(text: str, source: str) -> RustTokenizer:
    try:
        return RustTokenizer.from_str(text)
    except Exception as e:  # the library raises a bare Exception with serde's message
        raise ValueError(f"{source}: the tokenizers library cannot read it: {e}") from None


def class_pipeline(text: str, config: dict[str, Any], source: str) -> str:
    """The tokenizer.json transformers actually runs for this `tokenizer_config.json`."""
    cls = config.get("tokenizer_class")
    if cls not in (*LLAMA_CLASSES, *GEMMA_CLASSES):
        return text
    tok = _load(text, source)
    if cls in LLAMA_CLASSES:
        add_prefix_space = config.get("add_prefix_space")
        add_prefix_space = True if add_prefix_space is None else bool(add_prefix_space)
        legacy = bool(config.get("legacy", False))
        scheme = ("always" if legacy else "first") if add_prefix_space else "never"
        tok.normalizer = None
        tok.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="▁", prepend_scheme=scheme, split=False
        )
        steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        if add_prefix_space:
            steps.append(decoders.Strip(content=" ", left=1))
        tok.decoder = decoders.Sequence(steps)
    else:
        tok.normalizer = normalizers.Replace(" ", "▁")
        tok.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous", invert=False)
        tok.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        )
    return tok.to_str()


def _describe(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)[:200]


class LibraryEncoding:
    """A `tokenizers.Tokenizer` behind the subset of tiktoken's `Encoding` API tunelab uses.

    Three copies of the pipeline: as the file says (special tokens recognised in text), with
    special tokens encoded as plain text (user text), and that one again without the "▁" that
    `Metaspace(prepend_scheme="first")` adds at the start of the input (a piece that does not
    start the input, as `tokenizers` decides by the piece's offset).
    """

    def __init__(
        self, text: str, name: str, source: str, data: dict[str, Any] | None = None
    ) -> None:
        """`data`: `text` already parsed (saves parsing a large vocabulary twice)."""
        self.name = name
        self.source = source
        data = json.loads(text) if data is None else data
        model = data.get("model") or {}
        if model.get("dropout") not in (None, 0, 0.0):
            raise ValueError(
                f"{source}: model.dropout={model['dropout']!r} (random) is unsupported"
            )
        self._tok = _load(text, source)
        self._json = self._tok.to_str()
        self._plain = _load(self._json, source)
        self._plain.encode_special_tokens = True
        self._inner = self._plain
        pre = data.get("pre_tokenizer")
        metaspace = isinstance(pre, dict) and pre.get("type") == "Metaspace"
        if metaspace and pre.get("prepend_scheme") == "first":
            self._inner = _load(self._json, source)
            self._inner.pre_tokenizer = pre_tokenizers.Metaspace(
                replacement=pre.get("replacement", "▁"),
                prepend_scheme="never",
                split=bool(pre.get("split", False)),
            )
            self._inner.encode_special_tokens = True
        self.special_tokens: dict[str, int] = {}
        self.strip_flags: dict[str, tuple[bool, bool]] = {}
        normalizer = self._tok.normalizer
        for added in data.get("added_tokens") or []:
            if not added.get("special"):
                continue
            content = added["content"]
            if added.get("single_word"):
                raise ValueError(
                    f"{source}: special token {content!r} has single_word=true; unsupported"
                )
            changed = normalizer is not None and normalizer.normalize_str(content) != content
            if added.get("normalized") and changed:
                raise ValueError(
                    f"{source}: special token {content!r} is matched after a normalizer "
                    "that changes it; unsupported"
                )
            self.special_tokens[content] = int(added["id"])
            if added.get("lstrip") or added.get("rstrip"):
                self.strip_flags[content] = (bool(added.get("lstrip")), bool(added.get("rstrip")))
        self._special_ids = set(self.special_tokens.values())
        self.n_vocab = self._tok.get_vocab_size(with_added_tokens=True)
        replacement = "▁"
        if isinstance(pre, dict) and pre.get("type") == "Metaspace":
            replacement = pre.get("replacement", "▁")
        self._space = replacement

    # -- the tiktoken-like surface ---------------------------------------------------------
    def encode(
        self, text: str, allowed_special: Any = "all", disallowed_special: Any = ()
    ) -> list[int]:
        tok = self._tok if allowed_special == "all" else self._plain
        return tok.encode(text, add_special_tokens=False).ids

    def encode_ordinary(self, text: str) -> list[int]:
        return self._plain.encode(text, add_special_tokens=False).ids

    def encode_plain_offsets(self, text: str, at_start: bool) -> tuple[list[int], list[int]]:
        """Plain-text ids (special tokens as text) and each token's start in `text`."""
        enc = (self._plain if at_start else self._inner).encode(text, add_special_tokens=False)
        return list(enc.ids), [start for start, _ in enc.offsets]

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def decode_single_token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for ("▁" as a space, `<0x0A>` as that byte)."""
        piece = self._tok.id_to_token(int(token_id))
        if piece is None:
            raise KeyError(f"token id {token_id} is not in the vocabulary")
        if token_id in self._special_ids:
            return piece.encode("utf-8")
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            try:
                return bytes([int(piece[3:5], 16)])
            except ValueError:
                pass
        return piece.replace(self._space, " ").encode("utf-8")

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def to_json(self) -> str:
        return self._json
