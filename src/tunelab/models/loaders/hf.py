"""Hugging Face-format folders (config.json + model.safetensors, shards or pytorch_model.bin).

`load_hf_folder` reads config.json strictly (hf_config.py: every key implemented, harmless or
refused) and streams the weights into a meta-built model (hf_weights.py). The whole-state name
maps below serve the GGUF loader, checkpoints and exporters: GPT-2 folders store attention and MLP
weights as `Conv1D` (in, out), transposed relative to `nn.Linear`; Llama folders store q/k/v
separately, which tunelab fuses into one `qkv` projection.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tunelab.models.config import Config
from tunelab.models.decoder import Decoder

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def config_from_hf(path: Path) -> Config:
    """`Config` from the folder's config.json (strict: see loaders/hf_config.py)."""
    from tunelab.models.loaders.hf_config import config_from_hf as read

    return read(path)


def read_hf_state(path: Path) -> dict[str, torch.Tensor]:
    for name in WEIGHT_FILES:
        f = path / name
        if f.exists():
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(str(f))
            try:
                return torch.load(f, map_location="cpu", weights_only=True)
            except Exception as e:  # weights_only refuses pickles that carry code
                raise ValueError(f"{f}: cannot be read safely (weights_only=True): {e}") from None
    raise FileNotFoundError(f"{path}: no weights file; expected one of {', '.join(WEIGHT_FILES)}")


def _strip(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        for p in prefixes:
            if k.startswith(p):
                k = k[len(p) :]
                break
        out[k] = v
    return out


def gpt2_name_map(cfg: Config) -> list[tuple[str, str, bool]]:
    """(HF GPT-2 name, tunelab name, transposed) for every tensor; Conv1D weights are transposed."""
    names = [
        ("wte.weight", "wte.weight", False),
        ("wpe.weight", "wpe.weight", False),
        ("ln_f.weight", "norm_f.weight", False),
        ("ln_f.bias", "norm_f.bias", False),
    ]
    layers = [
        ("ln_1", "norm1", False),
        ("ln_2", "norm2", False),
        ("attn.c_attn", "attn.qkv", True),
        ("attn.c_proj", "attn.proj", True),
        ("mlp.c_fc", "mlp.fc", True),
        ("mlp.c_proj", "mlp.proj", True),
    ]
    for i in range(cfg.n_layer):
        for hf, ours, conv1d in layers:
            names.append((f"h.{i}.{hf}.weight", f"blocks.{i}.{ours}.weight", conv1d))
            names.append((f"h.{i}.{hf}.bias", f"blocks.{i}.{ours}.bias", False))
    return names


def gpt2_to_tunelab(state: dict[str, torch.Tensor], cfg: Config) -> dict[str, torch.Tensor]:
    s = _strip(state, ("transformer.",))
    out = {
        ours: s[hf].t().contiguous() if conv1d else s[hf] for hf, ours, conv1d in gpt2_name_map(cfg)
    }
    out["lm_head.weight"] = out["wte.weight"]
    return out


def tunelab_to_gpt2(state: dict[str, torch.Tensor], cfg: Config) -> dict[str, torch.Tensor]:
    """Inverse of `gpt2_to_tunelab` (used to write HF folders, e.g. for tests and export)."""
    return {
        hf: (state[ours].t() if conv1d else state[ours]).contiguous().clone()
        for hf, ours, conv1d in gpt2_name_map(cfg)
    }


def llama_to_tunelab(state: dict[str, torch.Tensor], cfg: Config) -> dict[str, torch.Tensor]:
    s = _strip(state, ("model.",))
    out = {"wte.weight": s["embed_tokens.weight"], "norm_f.weight": s["norm.weight"]}
    for i in range(cfg.n_layer):
        h, b = f"layers.{i}.", f"blocks.{i}."
        out[b + "norm1.weight"] = s[h + "input_layernorm.weight"]
        out[b + "norm2.weight"] = s[h + "post_attention_layernorm.weight"]
        out[b + "attn.qkv.weight"] = torch.cat(
            [s[h + f"self_attn.{p}_proj.weight"] for p in "qkv"], dim=0
        )
        out[b + "attn.proj.weight"] = s[h + "self_attn.o_proj.weight"]
        for p in ("gate", "up", "down"):
            out[b + f"mlp.{p}.weight"] = s[h + f"mlp.{p}_proj.weight"]
    if cfg.tie_embeddings or "lm_head.weight" not in state:
        out["lm_head.weight"] = out["wte.weight"]
    else:
        out["lm_head.weight"] = state["lm_head.weight"]
    return out


def tunelab_to_llama(state: dict[str, torch.Tensor], cfg: Config) -> dict[str, torch.Tensor]:
    """Inverse of `llama_to_tunelab`: HF Llama names, q/k/v split again (used by export)."""
    out = {
        "model.embed_tokens.weight": state["wte.weight"],
        "model.norm.weight": state["norm_f.weight"],
    }
    sizes = [cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim]
    for i in range(cfg.n_layer):
        h, b = f"model.layers.{i}.", f"blocks.{i}."
        out[h + "input_layernorm.weight"] = state[b + "norm1.weight"]
        out[h + "post_attention_layernorm.weight"] = state[b + "norm2.weight"]
        for p, w in zip("qkv", state[b + "attn.qkv.weight"].split(sizes, dim=0), strict=True):
            out[h + f"self_attn.{p}_proj.weight"] = w
        out[h + "self_attn.o_proj.weight"] = state[b + "attn.proj.weight"]
        for p in ("gate", "up", "down"):
            out[h + f"mlp.{p}_proj.weight"] = state[b + f"mlp.{p}.weight"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    return {k: v.contiguous().clone() for k, v in out.items()}


def load_state_strict(model: Decoder, state: dict[str, torch.Tensor], source: str) -> None:
    """Load weights, naming every missing/unexpected tensor and shape mismatch in one error."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(
            f"unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        )
    if shapes:
        problems.append("shape mismatches " + "; ".join(shapes[:5]))
    if problems:
        raise ValueError(f"{source}: weights do not fit the model config: " + "; ".join(problems))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


def load_hf_folder(path: str | Path, dtype: torch.dtype = torch.float32) -> Decoder:
    """A `Decoder` (eval mode, `dtype`) from a Hugging Face folder, strictly (hf_weights.py)."""
    from tunelab.models.loaders.hf_weights import load_hf_weights

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model folder not found: {path}")
    return load_hf_weights(path, dtype)


def save_hf_gpt2(model: Decoder, path: str | Path) -> Path:
    """Write a GPT-2 model as an HF-format folder (config.json + model.safetensors)."""
    from safetensors.torch import save_file

    cfg = model.cfg
    if cfg.family != "gpt2":
        raise ValueError("save_hf_gpt2 writes GPT-2-family models only")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    hf_cfg = {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.context_length,
        "n_ctx": cfg.context_length,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": cfg.intermediate_size,
        "layer_norm_epsilon": cfg.norm_eps,
        "activation_function": "gelu_new",
    }
    (path / "config.json").write_text(json.dumps(hf_cfg, indent=2), encoding="utf-8")
    save_file(tunelab_to_gpt2(model.state_dict(), cfg), str(path / "model.safetensors"))
    return path
