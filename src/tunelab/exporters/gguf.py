"""GGUF files for llama.cpp (and Ollama), written with the `gguf` package's `GGUFWriter`.

Tensor names come from llama.cpp's own table (`gguf.get_tensor_name_map`), Llama's Q/K rows are
permuted to llama.cpp's RoPE layout (see `families`), and the tokenizer is written as
`tokenizer.ggml.*` (byte-level BPE: tokens, types, merges, pre-tokenizer name, special ids) with
the prompt style's chat template. Types: F32, F16, BF16 and Q8_0 for matrices; vectors (norms,
biases) stay F32, as in `convert_hf_to_gguf.py`.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import LlamaFileType

from tunelab.exporters.chat_templates import ChatTemplates
from tunelab.exporters.families import FamilyExport
from tunelab.exporters.spm_vocab import CONTROL as SPM_CONTROL
from tunelab.exporters.spm_vocab import UNKNOWN as SPM_UNKNOWN
from tunelab.exporters.spm_vocab import USER_DEFINED as SPM_USER_DEFINED
from tunelab.exporters.spm_vocab import spm_vocabulary
from tunelab.exporters.tokenizer_files import CONTROL, GGUF_PRE, NORMAL, vocabulary
from tunelab.models.config import Config
from tunelab.models.decoder import Decoder
from tunelab.models.tokenizer import Tokenizer

log = logging.getLogger(__name__)

GGUF_NAMED = ("rope_freqs.weight",)  # tensors an entry gives under their llama.cpp name
GGUF_TYPES = {
    "f32": (Q.F32, LlamaFileType.ALL_F32),
    "f16": (Q.F16, LlamaFileType.MOSTLY_F16),
    "bf16": (Q.BF16, LlamaFileType.MOSTLY_BF16),
    "q8_0": (Q.Q8_0, LlamaFileType.MOSTLY_Q8_0),
}


def _encode(arr: np.ndarray, qtype: Q) -> tuple[np.ndarray, Q]:
    if arr.ndim < 2 or qtype == Q.F32:
        return arr.astype(np.float32), Q.F32
    if qtype == Q.F16:
        return arr.astype(np.float16), Q.F16
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    if arr.shape[-1] % block:
        raise ValueError(
            f"gguf_type={qtype.name.lower()}: a row of {arr.shape[-1]} values is not a multiple "
            f"of the {block}-value block; use f16, bf16 or f32"
        )
    return gguf.quants.quantize(arr.astype(np.float32), qtype), qtype


PHI3_NAMES = ("phi-3", "phi3")  # llama.cpp's rule: such a general.name rstrips special tokens
PHI3_NO_RSTRIP = ("<unk>", "<s>", "<|endoftext|>")


def gguf_name(name: str, tokenizer: Tokenizer, special: list[str]) -> str:
    """general.name, as llama.cpp reads it: a name holding "phi3"/"phi-3" makes every special
    token but <unk>, <s>, <|endoftext|> (and with </s>) take the white space after it, the one
    strip attribute a GGUF can carry. The tokenizer's own strip flags decide the name."""
    flags = getattr(tokenizer.encoding, "strip_flags", {})
    if any(left for left, _ in flags.values()):
        shown = next(t for t, (left, _) in flags.items() if left)
        raise ValueError(f"format=gguf: special token {shown!r} strips white space before it")
    rstrip = {t for t, (_, right) in flags.items() if right}
    phi3_named = any(m in name.lower() for m in PHI3_NAMES)
    if not rstrip:
        if phi3_named:
            raise ValueError(
                f"format=gguf: general.name {name!r} turns on llama.cpp's Phi-3 white-space "
                "stripping after special tokens, which this tokenizer does not do"
            )
        return name
    expected = (set(special) - set(PHI3_NO_RSTRIP)) | {"</s>"}
    needed = [t for t in ("</s>", *PHI3_NO_RSTRIP) if t not in special]
    if rstrip != expected or needed:
        raise ValueError(
            f"format=gguf: special tokens stripping white space after them "
            f"({', '.join(sorted(rstrip))}) are not llama.cpp's Phi-3 set (all but "
            f"{', '.join(PHI3_NO_RSTRIP)}, with </s>), the only one a GGUF can carry"
        )
    return name if phi3_named else f"{name}-phi3"


def _add_special_ids(w: gguf.GGUFWriter, tokenizer: Tokenizer, templates: ChatTemplates) -> None:
    w.add_eos_token_id(tokenizer.eos_id)
    if tokenizer.bos_id is not None:
        w.add_bos_token_id(tokenizer.bos_id)
    w.add_pad_token_id(tokenizer.pad_id)
    turn_ends = [i for i in tokenizer.stop_ids if i != tokenizer.eos_id]
    if turn_ends:
        w.add_eot_token_id(turn_ends[0])
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
    w.add_chat_template(templates.jinja)


def _add_tokenizer(
    w: gguf.GGUFWriter, tokenizer: Tokenizer, vocab_size: int, templates: ChatTemplates
) -> list[str]:
    """Writes `tokenizer.ggml.*`; returns the special tokens (for `gguf_name`)."""
    if tokenizer.kind != "tiktoken":  # SentencePiece kinds (Gemma 3, Phi-3, Llama 2)
        spm = spm_vocabulary(tokenizer, vocab_size)
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(spm.tokens)
        w.add_token_scores(spm.scores)
        w.add_token_types(spm.types)
        if not spm.add_space_prefix:
            w.add_add_space_prefix(False)
        if spm.unk_id is not None:
            w.add_unk_token_id(spm.unk_id)
        _add_special_ids(w, tokenizer, templates)
        kinds = (SPM_CONTROL, SPM_UNKNOWN, SPM_USER_DEFINED)
        return [t for t, k in zip(spm.tokens, spm.types, strict=True) if k in kinds]
    vocab = vocabulary(tokenizer, vocab_size)
    if vocab.pretokenizer not in GGUF_PRE:
        raise ValueError(
            f"tokenizer {tokenizer.name!r}: its pre-tokenizer regex has no llama.cpp name "
            f"tunelab knows (known: {', '.join(GGUF_PRE.values())}); cannot write it to GGUF"
        )
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(GGUF_PRE[vocab.pretokenizer])
    w.add_token_list(vocab.tokens)
    w.add_token_types([CONTROL if s else NORMAL for s in vocab.special])
    w.add_token_merges([f"{a} {b}" for a, b in vocab.merges])
    _add_special_ids(w, tokenizer, templates)
    return [t for t, s in zip(vocab.tokens, vocab.special, strict=True) if s]


def write_gguf(
    model: Decoder,
    tokenizer: Tokenizer,
    templates: ChatTemplates,
    entry: FamilyExport,
    path: Path,
    gguf_type: str = "f16",
) -> None:
    if gguf_type not in GGUF_TYPES:
        raise ValueError(f"gguf_type={gguf_type!r}: expected one of {', '.join(GGUF_TYPES)}")
    qtype, file_type = GGUF_TYPES[gguf_type]
    cfg = model.cfg
    assert entry.gguf_arch is not None
    arch = gguf.MODEL_ARCH_NAMES[entry.gguf_arch]
    names = gguf.get_tensor_name_map(entry.gguf_arch, cfg.n_layer)
    tensors = []
    for hf_name, tensor in entry.gguf_state(model.state_dict(), cfg).items():
        if hf_name in GGUF_NAMED:
            name = hf_name
        else:
            name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"format=gguf: no llama.cpp name for tensor {hf_name!r} ({arch})")
        data, dtype = _encode(tensor.detach().to("cpu").float().numpy(), qtype)
        tensors.append((name, data, dtype))

    w = gguf.GGUFWriter(str(path), arch)
    try:
        w.add_file_type(int(file_type))
        entry.gguf_hparams(w, cfg)
        special = _add_tokenizer(w, tokenizer, cfg.vocab_size, templates)
        w.add_name(gguf_name(cfg.name, tokenizer, special))
        for name, data, dtype in tensors:
            w.add_tensor(name, data, raw_dtype=dtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()
    check_read_back(path, cfg, arch)


def check_read_back(path: Path, cfg: Config, arch: str) -> None:
    """Refuse (one line) a file tunelab's GGUF reader reads into another model: that reader
    holds llama.cpp's fixed values per architecture (Gemma 3's layer pattern, local RoPE base,
    query scale), so a trait the metadata cannot carry shows up here."""
    from tunelab.models.loaders.gguf import config_from_gguf
    from tunelab.models.loaders.gguf_arch import ARCHITECTURES

    if arch not in ARCHITECTURES:
        return  # gpt2: tunelab does not read it; the entry's own checks stand
    back = config_from_gguf(gguf.GGUFReader(path))
    skip = {"name", "tokenizer", "extra", "dropout"}
    if arch == "olmo2":
        skip.add("tie_embeddings")  # llama.cpp's olmo2 needs output.weight: written untied
    for f in dataclasses.fields(Config):
        ours, theirs = getattr(cfg, f.name), getattr(back, f.name)
        if f.name not in skip and ours != theirs:
            raise ValueError(
                f"format=gguf: llama.cpp's {arch} metadata cannot express {f.name}={ours!r} "
                f"(the file reads back as {theirs!r})"
            )
