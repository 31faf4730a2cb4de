"""SFT throughput on a GPU in bf16-mixed, with model FLOPs utilisation (MFU).

    python benchmarks/gpu_sft.py --out $OUT/gpu.json                      # GPT-2 124M, < 3 min
    python benchmarks/gpu_sft.py --preset tiny-gpt2 --device cpu --steps 2 --out /tmp/gpu.json

Self-contained (tunelab + torch; no Hydra, no peers): tunelab's own training path (SFTTask in a Lightning Trainer,
`precision="bf16-mixed"`, the project's fused AdamW, GradClip) on the embedded instruction data
(Alpaca style, tunelab's shuffled order), batches packed into rows of at most `--max-length`.
For every batch size asked for it times `--steps` steps after `--warmup` untimed ones and writes
effective (non-pad) tokens/s and

    MFU = 6 * N * tokens/s / peak bf16 FLOP/s

with N the parameters in matrix products (blocks + LM head; embeddings lookups excluded), against
the device's datasheet dense bf16 peak and against a bf16 GEMM measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, TFLOP/s.
DATASHEET_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
}


def datasheet_peak(name: str) -> float | None:
    for key in sorted(DATASHEET_BF16_TFLOPS, key=len, reverse=True):
        if key in name:
            return DATASHEET_BF16_TFLOPS[key] * 1e12
    if "H100" in name:
        return DATASHEET_BF16_TFLOPS["H100 SXM"] * 1e12
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measured_bf16_peak(device: torch.device, n: int, reps: int = 10) -> float:
    """Best bf16 GEMM rate (n x n @ n x n) on the device, FLOP/s."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def matmul_params(cfg) -> int:
    d, f = cfg.n_embd, cfg.intermediate_size
    qkv = d * (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim
    proj = cfg.n_head * cfg.head_dim * d
    mlp = (3 if cfg.family == "llama" else 2) * d * f
    return cfg.n_layer * (qkv + proj + mlp) + cfg.vocab_size * d


ROOT = Path(__file__).resolve().parents[1]


def optimizer_factory():
    """The project's optimizer config (conf/optimizer/adamw.yaml) as a partial, without Hydra."""
    import importlib
    from functools import partial

    import yaml

    cfg = yaml.safe_load((ROOT / "conf" / "optimizer" / "adamw.yaml").read_text(encoding="utf-8"))
    module, _, name = cfg.pop("_target_").rpartition(".")
    cfg.pop("_partial_", None)
    if "betas" in cfg:
        cfg["betas"] = tuple(cfg["betas"])
    return partial(getattr(importlib.import_module(module), name), **cfg)


def start_profiler(device: torch.device):
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    prof = profile(activities=acts)
    prof.__enter__()
    return prof


def stop_profiler(prof, device: torch.device, top: int = 20) -> dict[str, Any]:
    """The ops that took the most device time and the most host time over the profiled steps."""
    prof.__exit__(None, None, None)
    events = prof.key_averages()
    dev_attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"

    def rows(attr: str) -> list[dict[str, Any]]:
        ranked = sorted(events, key=lambda e: getattr(e, attr, 0), reverse=True)[:top]
        return [
            {
                "op": e.key,
                "calls": e.count,
                "self_device_ms": getattr(e, dev_attr, 0) / 1000,
                "self_cpu_ms": e.self_cpu_time_total / 1000,
            }
            for e in ranked
        ]

    return {
        "by_device_time": rows(dev_attr),
        "by_host_time": rows("self_cpu_time_total"),
        "device_ms_total": sum(getattr(e, dev_attr, 0) for e in events) / 1000,
    }


def run_config(
    args, batch_size: int, device: torch.device, loop: str, chunked: bool = True
) -> dict[str, Any]:
    """Time `args.steps` steps (after `args.warmup`) of one batch size in one loop."""
    import statistics

    import lightning as L
    from torch.utils.data import DataLoader

    from tunelab.callbacks.grad_clip import GradClip
    from tunelab.data.packing import collate_packed
    from tunelab.data.sft import SFTDataModule
    from tunelab.models.config import Config
    from tunelab.models.decoder import Decoder
    from tunelab.models.tokenizer import gpt2_tokenizer
    from tunelab.tasks.base import next_token_loss
    from tunelab.tasks.sft import SFTTask

    tok = gpt2_tokenizer()
    cfg = Config.from_preset(args.preset, dropout=0.0)
    max_length = min(args.max_length, cfg.context_length)
    dm = SFTDataModule(batch_size=batch_size, max_length=max_length, seed=args.seed)
    dm.connect(tok, "alpaca")
    dm.setup()
    examples = dm.datasets["train"].examples
    order = [i for idx in dm.train_dataloader().batch_sampler for i in idx]
    n_steps = args.warmup + args.steps
    while len(order) < n_steps * batch_size:  # more epochs of the same order if needed
        order += order
    order = order[: n_steps * batch_size]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

    def collate(b):
        return collate_packed(
            b, pad_id=tok.pad_id, max_length=max_length, pad_to_multiple_of=args.pad_multiple
        )

    loader = DataLoader(
        [examples[i] for i in order], batch_size=batch_size, shuffle=False, collate_fn=collate
    )
    torch.manual_seed(args.seed)
    model = Decoder(cfg)
    task = SFTTask(
        model=model,
        tokenizer=tok,
        prompt_style="alpaca",
        optimizer=optimizer_factory(),
        chunked_lm_loss=chunked,
    )
    ends: list[float] = []
    profile = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if loop == "lightning":

        class Timer(L.Callback):
            def on_train_batch_end(self, *a: Any, **k: Any) -> None:
                sync(device)
                ends.append(time.perf_counter())

        trainer = L.Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu",
            devices=1,
            precision=args.precision,
            max_steps=n_steps,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            callbacks=[GradClip(max_norm=1.0), Timer()],
        )
        trainer.fit(task, train_dataloaders=loader)
        task.trainer = None
    else:  # the same module, batches, optimizer and clipping in a plain PyTorch loop
        model.to(device).train()
        optimizer = task.configure_optimizers()
        params = [q for g in optimizer.param_groups for q in g["params"]]
        bf16 = args.precision.startswith("bf16")
        profiler = None
        for i, batch in enumerate(loader):
            if args.profile and i == n_steps - args.profile:
                profiler = start_profiler(device)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss, _ = next_token_loss(model, batch, chunked)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync(device)
            ends.append(time.perf_counter())
        if profiler is not None:
            profile = stop_profiler(profiler, device)
    step_ms = [
        1000 * (b - a) for a, b in zip(ends[args.warmup - 1 : -1], ends[args.warmup :], strict=True)
    ]
    seconds = ends[-1] - ends[args.warmup - 1]
    timed = batches[args.warmup :]
    tokens = sum(len(examples[i].ids) for b in timed for i in b)
    rows = [collate([examples[i] for i in b]) for b in timed]
    slots = sum(r["input_ids"].numel() for r in rows)
    n_mm = matmul_params(model.cfg)
    median_ms = statistics.median(step_ms)
    out = {
        "loop": loop,
        "chunked_lm_loss": chunked,
        "batch_size": batch_size,
        "max_length": max_length,
        "pad_to_multiple_of": args.pad_multiple,
        "rows_per_step": sum(r["input_ids"].shape[0] for r in rows) / len(rows),
        "steps": args.steps,
        "seconds": seconds,
        "effective_tokens": tokens,
        "row_slots": slots,
        "padding_fraction": 1 - tokens / slots,
        "tokens_per_s": tokens / seconds,
        "step_ms": 1000 * seconds / args.steps,
        "step_ms_median": median_ms,
        "step_ms_each": [round(x, 2) for x in step_ms],
        # the median step's rate: robust to one-off stalls (new shapes, lazy kernel loading)
        "tokens_per_s_median_step": tokens / args.steps / (median_ms / 1000),
        "model_flops_per_s": 6 * n_mm * tokens / seconds,
        "matmul_params": n_mm,
        "all_params": model.num_parameters,
    }
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 1024**3
    if profile is not None:
        out["profile"] = profile
    del task, model
    return out


def check_varlen(args, device: torch.device) -> dict[str, Any]:
    """Packed batch in bf16: the varlen FlashAttention path against the masked path."""
    import tunelab.models.decoder as decoder
    from tunelab.data.packing import collate_packed
    from tunelab.models.config import Config
    from tunelab.models.tokenizer import gpt2_tokenizer
    from tunelab.tasks.base import next_token_loss

    try:
        tok = gpt2_tokenizer()
        cfg = Config.from_preset(args.preset, dropout=0.0)
        torch.manual_seed(args.seed)
        model = decoder.Decoder(cfg).to(device).train()
        g = torch.Generator().manual_seed(0)
        width = min(1024, cfg.context_length)
        lengths = torch.randint(20, width // 3, (24,), generator=g).tolist()
        seqs = [torch.randint(0, 50000, (n,), generator=g).tolist() for n in lengths]
        batch = collate_packed(seqs, pad_id=tok.pad_id, max_length=width, pad_to_multiple_of=64)
        batch = {k: v.to(device) for k, v in batch.items()}
        out = {}
        for varlen in (True, False):
            decoder.VARLEN_ATTENTION = varlen
            model.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                used = model._use_varlen(batch["input_ids"], batch["doc_ids"], None, None)
                hidden = model.hidden_states(
                    batch["input_ids"], positions=batch["positions"], doc_ids=batch["doc_ids"]
                )
                loss, _ = next_token_loss(model, batch)
            loss.backward()
            grad = torch.cat([p.grad.flatten().float() for p in model.parameters()])
            out[varlen] = (used, hidden.float(), float(loss), grad)
        decoder.VARLEN_ATTENTION = True
        real = batch["doc_ids"] >= 0
        dh = (out[True][1][real] - out[False][1][real]).abs().max().item()
        dg = ((out[True][3] - out[False][3]).norm() / out[False][3].norm()).item()
        ok = out[True][0] and abs(out[True][2] - out[False][2]) < 2e-2 and dg < 5e-2
        return {
            "ok": bool(ok),
            "varlen_used": out[True][0],
            "loss_varlen": out[True][2],
            "loss_masked": out[False][2],
            "max_abs_hidden_diff": dh,
            "grad_rel_diff": dg,
            "spans": int(decoder.packed_spans(batch["doc_ids"]).cu_seqlens.numel() - 1),
        }
    except Exception as e:  # an API mismatch must not cost the rest of the run
        decoder.VARLEN_ATTENTION = False
        return {"ok": False, "error": f"{type(e).__name__}: {e}"[:2000]}


def run_matrix(args) -> list[tuple[str, int, str, bool]]:
    """(sdpa, batch size, loop, chunked) in the order to run: --matrix, or the product."""
    if args.matrix:
        out = []
        for item in args.matrix.split(","):
            sdpa, bs, loop, chunked = item.split(":")
            out.append((sdpa, int(bs), loop, chunked == "chunked"))
        return out
    sdpa_modes = [x for x in args.sdpa.split(",") if x]
    if args.device != "cuda":  # the choice of attention kernels only exists on CUDA
        sdpa_modes = sdpa_modes[:1]
    return [
        (sdpa, bs, loop, chunked == "true")
        for sdpa in sdpa_modes
        for bs in [int(x) for x in args.batch_sizes.split(",") if x]
        for loop in [x for x in args.loops.split(",") if x]
        for chunked in [x for x in args.chunked.split(",") if x]
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--preset", default="gpt2-124m")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="bf16-mixed")
    p.add_argument("--batch-sizes", default="8,64", help="comma-separated; 8 is the SFT figure")
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--loops", default="lightning,plain", help="lightning (tunelab's path), plain")
    p.add_argument(
        "--sdpa",
        default="tunelab,pytorch",
        help="attention for packed rows: tunelab (the decoder's choice: varlen FlashAttention in "
        "bf16), masked (memory-efficient attention with the block-diagonal mask), pytorch "
        "(PyTorch's own pick for the mask, which may be cuDNN attention: it builds a graph per "
        "new sequence length, and packed rows vary in length)",
    )
    p.add_argument(
        "--chunked",
        default="true",
        help="task.chunked_lm_loss values to run: true (LM head + loss in chunks), false (logits)",
    )
    p.add_argument(
        "--matrix",
        default="",
        help="explicit runs instead of the product, e.g. tunelab:8:lightning:chunked,"
        "pytorch:64:plain:logits",
    )
    p.add_argument(
        "--profile", type=int, default=0, help="profile the last N steps of each plain-loop run"
    )
    p.add_argument(
        "--budget-s", type=float, default=0, help="skip the remaining runs after this many seconds"
    )
    p.add_argument(
        "--pad-multiple",
        type=int,
        default=None,
        help="round packed rows up to a multiple (default: 64 on CUDA, 1 on CPU)",
    )
    p.add_argument("--seed", type=int, default=123)
    args = p.parse_args(argv)
    if args.warmup < 1:
        p.error("--warmup must be >= 1 (the clock starts at the end of the last warmup step)")
    device = torch.device(args.device)
    if args.pad_multiple is None:
        args.pad_multiple = 64 if device.type == "cuda" else 1
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
    t0 = time.perf_counter()
    measured = measured_bf16_peak(device, 8192 if device.type == "cuda" else 256)
    sheet = datasheet_peak(name) if device.type == "cuda" else None
    results: dict[str, Any] = {
        "device": name,
        "device_type": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": sys.version.split()[0],
        "preset": args.preset,
        "precision": args.precision,
        "max_length": args.max_length,
        "packing": True,
        "bf16_peak_datasheet_flops": sheet,
        "bf16_gemm_measured_flops": measured,
        "runs": [],
        "skipped": [],
    }
    import tunelab.models.decoder as decoder

    default_backends = decoder.MASKED_SDPA_BACKENDS
    if device.type == "cuda":
        results["varlen_check"] = check_varlen(args, device)
        print("varlen check:", results["varlen_check"], flush=True)
    varlen_ok = bool(results.get("varlen_check", {}).get("ok", True))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for sdpa, bs, loop, chunked in run_matrix(args):
        if args.budget_s and time.perf_counter() - t0 > args.budget_s:
            results["skipped"].append(f"{sdpa}:{bs}:{loop}:{chunked}")
            continue
        # tunelab: varlen FlashAttention for packed rows (if it passed its check), else the
        # memory-efficient kernel with the mask; masked: always the latter; pytorch: PyTorch's pick
        decoder.VARLEN_ATTENTION = sdpa == "tunelab" and varlen_ok
        decoder.MASKED_SDPA_BACKENDS = None if sdpa == "pytorch" else default_backends
        r = {"sdpa": sdpa, **run_config(args, bs, device, loop, chunked)}
        r["mfu_vs_datasheet"] = r["model_flops_per_s"] / sheet if sheet else None
        r["mfu_vs_measured_gemm"] = r["model_flops_per_s"] / measured
        results["runs"].append(r)
        mfu = r["mfu_vs_datasheet"] or r["mfu_vs_measured_gemm"]
        print(
            f"sdpa {sdpa} batch {bs} {loop} chunked={chunked}: {r['tokens_per_s']:.0f} tokens/s, "
            f"{r['step_ms']:.1f} ms/step (median {r['step_ms_median']:.1f}), MFU {100 * mfu:.2f}%",
            flush=True,
        )
        results["wall_s"] = time.perf_counter() - t0
        # written after every run: a run cut short by a time limit keeps what it measured
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    decoder.MASKED_SDPA_BACKENDS, decoder.VARLEN_ATTENTION = default_backends, True
    results["wall_s"] = time.perf_counter() - t0
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
