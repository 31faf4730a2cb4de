"""LoRA files: adapter-only tunelab checkpoints, merged checkpoints, and PEFT's adapter format.

An adapter checkpoint is a Lightning `.ckpt` whose `state_dict` holds only the adapter tensors
(`model.<module>.lora_a.<target>`, ...) and whose `tunelab.lora` metadata holds the LoRA config
and how to load the base again (`source`, `seed`, `context_length`) with the base's sha256. The
base is loaded from its source and checked against the hash: an adapter is never put on another
base.

PEFT format (`adapter_config.json` + `adapter_model.safetensors`): the key names PEFT uses for
the Hugging Face architecture (`LlamaForCausalLM` for the llama family, `GPT2LMHeadModel` for
GPT-2), so `PeftModel.from_pretrained(<transformers model>, folder)` gives the same logits. GPT-2's
fused `c_attn` carries the q/k/v adapters as one adapter of rank (rank x adapted slices): A
stacked, B block-diagonal, with `rank_pattern`/`alpha_pattern` keeping alpha / rank the same.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from tunelab.models.lora import LoRALinear, apply_lora, base_digest, is_lora_key, lora_modules

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def lora_checkpoint_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if is_lora_key(k)}


def load_base(base: dict[str, Any], where: str):
    """The base model of an adapter checkpoint, loaded from its source and checked by hash."""
    from tunelab.models.api import load_pretrained

    source = base.get("source")
    if not source:
        raise ValueError(f"{where}: LoRA checkpoint without a base model source")
    try:
        loaded = load_pretrained(
            str(source), seed=base.get("seed"), context_length=base.get("context_length")
        )
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{where}: base model of the LoRA adapters not found: {e}"
        ) from None
    if has_adapters(loaded.model):  # a LoRA checkpoint as base: its merged model is the base
        from tunelab.models.lora import merge_lora

        merge_lora(loaded.model)
    if base.get("sha256") and base_digest(loaded.model) != base["sha256"]:
        raise ValueError(
            f"{where}: the base model {source!r} differs from the one these LoRA adapters were "
            "trained on (sha256 mismatch)"
        )
    return loaded


def has_adapters(model: torch.nn.Module) -> bool:
    return any(True for _ in lora_modules(model))


def load_lora_checkpoint(ckpt: dict[str, Any], where: str):
    """(model with adapters, tokenizer, prompt style) from a read adapter checkpoint."""
    from tunelab.models.tokenizer import Tokenizer

    meta = ckpt["tunelab"]
    lora = meta["lora"]
    loaded = load_base(lora.get("base", {}), where)
    model = apply_lora(loaded.model, lora["config"], base=lora.get("base"))
    prefix = "model."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    expected = lora_checkpoint_state(model)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(
            f"{where}: adapters do not fit the LoRA config: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, shape mismatches {shapes[:3]}"
        )
    model.load_state_dict(state, strict=False)
    tokenizer = Tokenizer.from_spec(meta["tokenizer"])
    return model.eval(), tokenizer, meta.get("prompt_style", "alpaca")


def save_model_checkpoint(model, tokenizer, prompt_style: str, path: str | Path) -> Path:
    """A full-model tunelab checkpoint (as a training run writes), atomically."""
    from tunelab.models.loaders.checkpoint import checkpoint_metadata

    if has_adapters(model):
        raise ValueError("save_model_checkpoint: merge the LoRA adapters first")
    path = Path(path)
    ckpt = {
        "tunelab": checkpoint_metadata(model, tokenizer, prompt_style),
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
    }
    _atomic_write(path, lambda tmp: torch.save(ckpt, tmp))
    return path


# -- PEFT format -----------------------------------------------------------------------------

# tunelab target -> HF module name inside a layer, per family
_LLAMA = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "attn_out": "self_attn.o_proj",
    "mlp_gate": "mlp.gate_proj",
    "mlp_in": "mlp.up_proj",
    "mlp_out": "mlp.down_proj",
}
_GPT2 = {"attn_out": "attn.c_proj", "mlp_in": "mlp.c_fc", "mlp_out": "mlp.c_proj"}
_GPT2_QKV = "attn.c_attn"


def peft_adapter(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(PEFT state dict, adapter_config.json content) for the model's adapters."""
    family = model.cfg.family
    if family not in ("llama", "gpt2"):
        raise ValueError(f"PEFT export: no Hugging Face name map for the {family!r} family")
    meta = getattr(model, "lora_meta", None)
    if meta is None:
        raise ValueError("PEFT export: the model has no LoRA adapters")
    cfg = meta["config"]
    rank, alpha = int(cfg["rank"]), float(cfg["alpha"])
    state: dict[str, torch.Tensor] = {}
    modules: set[str] = set()
    rank_pattern: dict[str, int] = {}
    alpha_pattern: dict[str, float] = {}
    for name, lin in lora_modules(model):
        if name == "lm_head":
            _put(state, "lm_head", lin.lora_a["lm_head"], lin.lora_b["lm_head"])
            modules.add("lm_head")
            continue
        _, i, rest = name.split(".", 2)
        if family == "llama":
            for target in lin.slices:
                hf = _LLAMA[target]
                _put(state, f"model.layers.{i}.{hf}", lin.lora_a[target], lin.lora_b[target])
                modules.add(hf.split(".")[-1])
        elif rest == "attn.qkv":
            a, b = _stacked(lin)
            _put(state, f"transformer.h.{i}.{_GPT2_QKV}", a, b)
            modules.add("c_attn")
            if len(lin.slices) > 1:
                rank_pattern["c_attn"] = a.shape[0]
                alpha_pattern["c_attn"] = alpha * len(lin.slices)
        else:
            (target,) = lin.slices
            hf = _GPT2[target]  # attention and MLP both have a c_proj: name the parent too
            _put(state, f"transformer.h.{i}.{hf}", lin.lora_a[target], lin.lora_b[target])
            modules.add(hf)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(meta["base"].get("source", "")),
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": float(cfg["dropout"]),
        "target_modules": sorted(modules),
        "bias": "none",
        "fan_in_fan_out": family == "gpt2",
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "modules_to_save": None,
        "init_lora_weights": True,
        "inference_mode": True,
        "use_rslora": False,
        "use_dora": False,
    }
    return state, config


def _put(state, module: str, a: torch.Tensor, b: torch.Tensor) -> None:
    state[f"base_model.model.{module}.lora_A.weight"] = a.detach().cpu().contiguous().clone()
    state[f"base_model.model.{module}.lora_B.weight"] = b.detach().cpu().contiguous().clone()


def _stacked(lin: LoRALinear) -> tuple[torch.Tensor, torch.Tensor]:
    """One adapter for a fused projection: A stacked (k*r, in), B block-diagonal (out, k*r)."""
    r = lin.rank
    a = torch.cat([lin.lora_a[n] for n in lin.slices], dim=0)
    b = a.new_zeros(lin.out_features, r * len(lin.slices))
    for j, (n, (start, end)) in enumerate(lin.slices.items()):
        b[start:end, j * r : (j + 1) * r] = lin.lora_b[n]
    return a, b


def save_peft_adapter(model: torch.nn.Module, folder: str | Path) -> Path:
    """Write `adapter_config.json` + `adapter_model.safetensors` (atomically, file by file)."""
    from safetensors.torch import save_file

    state, config = peft_adapter(model)
    folder = Path(folder)
    _atomic_write(folder / PEFT_WEIGHTS, lambda tmp: save_file(state, tmp))
    _atomic_write(
        folder / PEFT_CONFIG,
        lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8"),
    )
    return folder
