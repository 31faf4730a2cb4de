"""Peak memory of DPO training: frozen reference copy vs precomputed reference log-probs.

Each mode runs in a fresh subprocess (so one run's allocations cannot hide the other's) that
builds the model, the embedded preference data and `DPOTask`, and trains a few steps with
Lightning. Measured in the child:

- rss_start: resident memory when training starts (model, reference copy if any, data);
- peak_train: the peak resident memory during the training steps (Linux: the high-water mark is
  reset through /proc/self/clear_refs when training starts, then VmHWM is read at its end);
- peak_process: the whole process's peak (`resource.getrusage(...).ru_maxrss`);
- with --accelerator cuda also the peak of `torch.cuda.max_memory_allocated` during training.

    python benchmarks/dpo_memory.py                         # gpt2-124m shape, 3 steps (CPU)
    python benchmarks/dpo_memory.py --model smollm2-135m    # the real SmolLM2 weights
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

MB = 1024 * 1024


def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the kernel's resident-set high-water mark (VmHWM); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(args: argparse.Namespace) -> dict:
    import lightning as L
    import torch

    from tunelab.data.preference import PreferenceDataModule
    from tunelab.models import load_pretrained
    from tunelab.tasks.dpo import DPOTask

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    loaded = load_pretrained(args.model, seed=0)
    dm = PreferenceDataModule(
        limit=args.pairs,
        split=(0.8, 0.2, 0.0),
        batch_size=args.batch_size,
        max_length=args.max_length,
        max_prompt_length=args.max_length // 2,
        seed=0,
    )
    dm.connect(loaded.tokenizer, loaded.prompt_style, loaded.model.cfg.context_length)
    task = DPOTask(
        loaded.model,
        loaded.tokenizer,
        loaded.prompt_style,
        optimizer=partial(torch.optim.AdamW, lr=1e-5),
        reference=args.mode,
        ref_cache=None,
    )
    cuda = args.accelerator == "cuda"
    out: dict = {"mode": args.mode, "model": args.model}

    class Probe(L.Callback):
        def on_train_start(self, trainer, pl_module):
            out["rss_start_mb"] = (_status_kb("VmRSS") or 0) / 1024
            out["hwm_reset"] = _reset_peak()
            if cuda:
                torch.cuda.synchronize()
                out["cuda_start_mb"] = torch.cuda.memory_allocated() / MB
                torch.cuda.reset_peak_memory_stats()
            self.t0 = time.perf_counter()

        def on_train_end(self, trainer, pl_module):
            if cuda:
                torch.cuda.synchronize()
                out["cuda_peak_train_mb"] = torch.cuda.max_memory_allocated() / MB
            out["seconds_per_step"] = (time.perf_counter() - self.t0) / max(trainer.global_step, 1)
            out["peak_train_mb"] = (_status_kb("VmHWM") or 0) / 1024

    trainer = L.Trainer(
        accelerator="gpu" if cuda else "cpu",
        devices=1,
        precision="32-true",
        max_steps=args.steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Probe()],
    )
    trainer.fit(task, datamodule=dm)
    out["peak_process_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["model_mb"] = sum(p.numel() * p.element_size() for p in loaded.model.parameters()) / MB
    out["reference_model_in_memory"] = task.ref_model is not None
    return out


def _fmt(col: str, value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if col == "seconds_per_step" else f"{value:.0f}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gpt2-124m", help="preset or model source")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per step")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--pairs", type=int, default=20, help="pairs (80%% train, 20%% val)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--accelerator", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", choices=("frozen", "precomputed"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.mode = args.child
        print("RESULT " + json.dumps(child(args)), flush=True)
        return 0
    results = []
    for mode in ("frozen", "precomputed"):
        cmd = [sys.executable, __file__, "--child", mode, *(argv or sys.argv[1:])]
        res = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
        if res.returncode != 0 or not lines:
            print(res.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{mode}: the child run failed (exit {res.returncode})")
        results.append(json.loads(lines[-1][len("RESULT ") :]))
    cols = ["mode", "model_mb", "rss_start_mb", "peak_train_mb", "peak_process_mb"]
    if args.accelerator == "cuda":
        cols += ["cuda_start_mb", "cuda_peak_train_mb"]
    cols.append("seconds_per_step")
    print("| " + " | ".join(cols) + " |")
    print("|" + " --- |" * len(cols))
    for r in results:
        print("| " + " | ".join(_fmt(c, r[c]) for c in cols) + " |")
    frozen, pre = results
    key = "cuda_peak_train_mb" if args.accelerator == "cuda" else "peak_train_mb"
    print(
        f"\npeak in training: frozen {frozen[key]:.0f} MB, precomputed {pre[key]:.0f} MB; "
        f"saved {frozen[key] - pre[key]:.0f} MB (one model's weights: {pre['model_mb']:.0f} MB)"
    )
    if not all(r.get("hwm_reset") for r in results) and args.accelerator == "cpu":
        print("note: VmHWM could not be reset; peak_train is the whole process's peak")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
