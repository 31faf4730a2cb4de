"""Weights of a Hugging Face folder into a `Decoder`, strictly and without a second copy.

The model is built on the meta device and given its storage once, in the target dtype; then each
tensor of `model.safetensors` (or of the shards listed in `model.safetensors.index.json`, or of a
`pytorch_model.bin`) is read straight from the file into the parameter rows it fills (q/k/v into
the fused `attn.qkv`, Phi-3's fused `gate_up_proj` split into `mlp.gate` and `mlp.up`, GPT-2's
Conv1D transposed). safetensors files are read with plain reads, not a memory map, so the
process never holds a file's pages beside the weights: peak memory is the weights plus one tensor.

Strict: a tensor with no place in the model, a parameter left unfilled, a shape or dtype that does
not fit each fail naming the tensor and its file. The only tensors skipped are ones transformers
itself derives and ignores on load (GPT-2's causal-mask buffers, RoPE `inv_freq` buffers).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from tunelab.models.config import Config
from tunelab.models.decoder import Decoder
from tunelab.models.loaders.hf_config import config_from_hf_dict, read_config_json

FLOAT_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
}
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")  # derived buffers


@dataclass(frozen=True)
class Target:
    """Where (part of) a file tensor goes: `dest` rows [dest_rows), from source rows [src_rows)."""

    dest: str
    dest_rows: tuple[int, int] | None = None
    src_rows: tuple[int, int] | None = None
    transpose: bool = False  # GPT-2 Conv1D weights are stored (in, out)
    check_equal: bool = False  # a tied lm_head.weight: must equal the embedding it is tied to


@dataclass(frozen=True)
class Entry:
    shape: tuple[int, ...]
    targets: tuple[Target, ...]
    optional: bool = False


def _rows(sizes: list[int]) -> list[tuple[int, int]]:
    out, start = [], 0
    for n in sizes:
        out.append((start, start + n))
        start += n
    return out


def gpt2_plan(cfg: Config) -> dict[str, Entry]:
    d, f, v = cfg.n_embd, cfg.intermediate_size, cfg.vocab_size
    plan = {
        "wte.weight": Entry((v, d), (Target("wte.weight"),)),
        "wpe.weight": Entry((cfg.context_length, d), (Target("wpe.weight"),)),
        "ln_f.weight": Entry((d,), (Target("norm_f.weight"),)),
        "ln_f.bias": Entry((d,), (Target("norm_f.bias"),)),
        "lm_head.weight": Entry((v, d), (Target("wte.weight", check_equal=True),), True),
    }
    layers = [
        ("ln_1", "norm1", (d,), None),
        ("ln_2", "norm2", (d,), None),
        ("attn.c_attn", "attn.qkv", (d, 3 * d), 3 * d),
        ("attn.c_proj", "attn.proj", (d, d), d),
        ("mlp.c_fc", "mlp.fc", (d, f), f),
        ("mlp.c_proj", "mlp.proj", (f, d), d),
    ]
    for i in range(cfg.n_layer):
        for hf, ours, shape, bias in layers:
            w, b = f"h.{i}.{hf}", f"blocks.{i}.{ours}"
            plan[w + ".weight"] = Entry(shape, (Target(b + ".weight", transpose=bias is not None),))
            plan[w + ".bias"] = Entry((bias or d,), (Target(b + ".bias"),))
    return plan


def llama_plan(cfg: Config, fused: bool = False) -> dict[str, Entry]:
    """Llama-layout names (without the `model.` prefix); fused: Phi-3's qkv_proj / gate_up_proj."""
    d, f, v = cfg.n_embd, cfg.intermediate_size, cfg.vocab_size
    nq, nkv = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
    plan = {
        "embed_tokens.weight": Entry((v, d), (Target("wte.weight"),)),
        "norm.weight": Entry((d,), (Target("norm_f.weight"),)),
    }
    if cfg.tie_embeddings:
        plan["lm_head.weight"] = Entry((v, d), (Target("wte.weight", check_equal=True),), True)
    else:
        plan["lm_head.weight"] = Entry((v, d), (Target("lm_head.weight"),))
    for i in range(cfg.n_layer):
        h, b = f"layers.{i}.", f"blocks.{i}."

        def put(name: str, shape: tuple[int, ...], *targets: Target, h: str = h) -> None:
            plan[h + name] = Entry(shape, targets)

        if cfg.pre_norm:
            put("input_layernorm.weight", (d,), Target(b + "norm1.weight"))
        after_attn = "post_attn_norm" if cfg.post_attn_norm else "norm2"
        put("post_attention_layernorm.weight", (d,), Target(f"{b}{after_attn}.weight"))
        if cfg.pre_norm and cfg.post_attn_norm:  # Gemma 3: four norms per block
            put("pre_feedforward_layernorm.weight", (d,), Target(b + "norm2.weight"))
        if cfg.post_mlp_norm:
            put("post_feedforward_layernorm.weight", (d,), Target(b + "post_mlp_norm.weight"))
        qkv = b + "attn.qkv."
        if fused:
            put("self_attn.qkv_proj.weight", (nq + 2 * nkv, d), Target(qkv + "weight"))
        else:
            for p, rows in zip("qkv", _rows([nq, nkv, nkv]), strict=True):
                n = rows[1] - rows[0]
                put(f"self_attn.{p}_proj.weight", (n, d), Target(qkv + "weight", rows))
                if cfg.qkv_bias:
                    put(f"self_attn.{p}_proj.bias", (n,), Target(qkv + "bias", rows))
        put("self_attn.o_proj.weight", (d, nq), Target(b + "attn.proj.weight"))
        if cfg.attn_out_bias:
            put("self_attn.o_proj.bias", (d,), Target(b + "attn.proj.bias"))
        if cfg.qk_norm != "none":
            q_dim, k_dim = (cfg.head_dim, cfg.head_dim) if cfg.qk_norm == "head" else (nq, nkv)
            put("self_attn.q_norm.weight", (q_dim,), Target(b + "attn.q_norm.weight"))
            put("self_attn.k_norm.weight", (k_dim,), Target(b + "attn.k_norm.weight"))
        if fused:
            put(
                "mlp.gate_up_proj.weight",
                (2 * f, d),
                Target(b + "mlp.gate.weight", src_rows=(0, f)),
                Target(b + "mlp.up.weight", src_rows=(f, 2 * f)),
            )
            put("mlp.down_proj.weight", (d, f), Target(b + "mlp.down.weight"))
        else:
            for p, shape in (("gate", (f, d)), ("up", (f, d)), ("down", (d, f))):
                put(f"mlp.{p}_proj.weight", shape, Target(f"{b}mlp.{p}.weight"))
                if cfg.mlp_bias:
                    put(f"mlp.{p}_proj.bias", shape[:1], Target(f"{b}mlp.{p}.bias"))
    return plan


# -- reading files ---------------------------------------------------------------------------


def _safetensors(file: Path) -> Iterator[tuple[str, torch.dtype, tuple[int, ...], Callable]]:
    """(name, dtype, shape, read_into(out) / read()) per tensor, by plain reads in file order."""
    with open(file, "rb") as fh:
        try:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        except (struct.error, ValueError):
            raise ValueError(f"{file}: not a safetensors file (bad header)") from None
        base = 8 + n
        entries = sorted(
            ((k, v) for k, v in header.items() if k != "__metadata__"),
            key=lambda kv: kv[1]["data_offsets"][0],
        )
        for name, info in entries:
            if info["dtype"] not in FLOAT_DTYPES:
                raise ValueError(
                    f"{file}: tensor {name!r} has dtype {info['dtype']}; tunelab loads F32, F16, "
                    "BF16 or F64 weights"
                )
            dtype, shape = FLOAT_DTYPES[info["dtype"]], tuple(info["shape"])
            start, end = info["data_offsets"]

            def read(
                out: torch.Tensor | None = None,
                start=start,
                end=end,
                dtype=dtype,
                shape=shape,
                name=name,
            ):
                out = torch.empty(shape, dtype=dtype) if out is None else out
                fh.seek(base + start)
                buf = out.view(-1).view(torch.uint8).numpy()
                if end - start != buf.nbytes or fh.readinto(memoryview(buf)) != buf.nbytes:
                    raise ValueError(f"{file}: tensor {name!r} is truncated")
                return out

            yield name, dtype, shape, read


def _torch_bin(file: Path) -> Iterator[tuple[str, torch.dtype, tuple[int, ...], Callable]]:
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # weights_only refuses pickles that carry code
        raise ValueError(f"{file}: cannot be read safely (weights_only=True): {e}") from None
    for name, t in state.items():
        if not t.is_floating_point():
            raise ValueError(f"{file}: tensor {name!r} has dtype {t.dtype}, not floating point")

        def read(out: torch.Tensor | None = None, t=t):
            return t if out is None else out.copy_(t)

        yield name, t.dtype, tuple(t.shape), read


def weight_files(path: Path) -> list[Path]:
    """The folder's weight files: one file, or the shards an index lists (in order)."""
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (path / single).is_file():
            return [path / single]
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / index).is_file():
            try:
                weight_map = json.loads((path / index).read_text(encoding="utf-8"))["weight_map"]
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"{path / index}: not a weight index (no 'weight_map')") from None
            shards = sorted(set(weight_map.values()))
            missing = [s for s in shards if not (path / s).is_file()]
            if missing:
                raise FileNotFoundError(f"{path / index}: lists shard {missing[0]!r}, not found")
            return [path / s for s in shards]
    raise FileNotFoundError(
        f"{path}: no weights file; expected one of model.safetensors, "
        "model.safetensors.index.json, pytorch_model.bin"
    )


# -- loading -----------------------------------------------------------------------------------


def _normalize(name: str, family: str) -> str:
    prefix = "transformer." if family == "gpt2" else "model."
    return name[len(prefix) :] if name.startswith(prefix) else name


def empty_model(cfg: Config, dtype: torch.dtype) -> Decoder:
    """A `Decoder` with uninitialised storage in `dtype` (no random init, no fp32 detour)."""
    with torch.device("meta"):
        model = Decoder(cfg).to(dtype)
    model = model.to_empty(device="cpu")
    if cfg.tie_embeddings:  # to_empty gives every parameter its own storage: tie again
        model.lm_head.weight = model.wte.weight
    return model


def load_hf_weights(path: Path, dtype: torch.dtype = torch.float32) -> Decoder:
    hf = read_config_json(path)
    cfg = config_from_hf_dict(hf, str(path / "config.json"), path.name)
    plan = gpt2_plan(cfg) if cfg.family == "gpt2" else llama_plan(cfg, hf["model_type"] == "phi3")
    model = empty_model(cfg, dtype)
    params = dict(model.named_parameters())
    filled: dict[str, list[tuple[int, int]]] = {name: [] for name in params}
    seen: set[str] = set()
    checks: list[tuple[Path, str, Target]] = []
    for file in weight_files(path):
        reader = _safetensors if file.suffix == ".safetensors" else _torch_bin
        for raw, file_dtype, shape, read in reader(file):
            name = _normalize(raw, cfg.family)
            if name.endswith(IGNORED_SUFFIXES) and name not in plan:
                continue
            entry = plan.get(name)
            if entry is None:
                raise ValueError(
                    f"{file}: tensor {raw!r} has no place in a {hf['model_type']} model with this "
                    "config.json; refusing to drop it"
                )
            if name in seen:
                raise ValueError(f"{file}: tensor {raw!r} appears twice in the folder")
            seen.add(name)
            if shape != entry.shape:
                raise ValueError(
                    f"{file}: tensor {raw!r} has shape {list(shape)}; config.json implies "
                    f"{list(entry.shape)}"
                )
            _place(file, raw, file_dtype, read, entry, params, filled, checks)
    for name, entry in plan.items():
        if name not in seen and not entry.optional:
            raise ValueError(f"{path}: weights lack tensor {name!r} required by its config.json")
    for name, spans in filled.items():
        rows = params[name].shape[0] if params[name].dim() else 1
        if (
            sorted(spans) != _rows([b - a for a, b in sorted(spans)])
            or sum(b - a for a, b in spans) != rows
        ):
            raise ValueError(
                f"{path}: parameter {name!r} is not filled exactly once by the weights"
            )
    for file, raw, target in checks:
        _check_tied(file, raw, target, params)
    return model.eval()


def _place(file, raw, file_dtype, read, entry: Entry, params, filled, checks) -> None:
    targets = entry.targets
    if targets[0].check_equal:
        checks.append((file, raw, targets[0]))
        return
    first = targets[0]
    dest = params[first.dest]
    whole = (
        len(targets) == 1
        and first.dest_rows is None
        and not first.transpose
        and dest.dtype == file_dtype
    )
    with torch.no_grad():
        if whole:  # straight from the file into the parameter
            read(dest.data)
        else:
            tensor = read()
            for t in targets:
                src = tensor if t.src_rows is None else tensor[t.src_rows[0] : t.src_rows[1]]
                if t.transpose:
                    src = src.t()
                out = params[t.dest].data
                if t.dest_rows is not None:
                    out = out[t.dest_rows[0] : t.dest_rows[1]]
                out.copy_(src)
            del tensor
    for t in targets:
        n = params[t.dest].shape[0] if params[t.dest].dim() else 1
        filled[t.dest].append(t.dest_rows or (0, n))


def _check_tied(file: Path, raw: str, target: Target, params) -> None:
    reader = _safetensors if file.suffix == ".safetensors" else _torch_bin
    for name, _, _, read in reader(file):
        if name == raw:
            tensor = read()
            if not torch.equal(tensor.to(params[target.dest].dtype), params[target.dest].data):
                raise ValueError(
                    f"{file}: tensor {raw!r} differs from the embedding it is tied to "
                    "(tie_word_embeddings); refusing to pick one"
                )
            return
