"""Shared driver of the model-shape benchmarks (benchmarks/lora.py, benchmarks/families.py).

Each figure trains the same weights on the same batches in contenders that each run a segment in
a fresh process (benchmarks/worker.py), in an order rotated every repeat; ratios are taken inside
a repeat (paired), and their median, min and max over the repeats are reported, as in
benchmarks/run.py. Results go into one section of benchmarks/results.json and one marked block
of benchmarks/README.md, so figures of other drivers are kept.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    BENCH_DIR,
    bench_tokenizer,
    build_hf_model,
    effective_tokens,
    make_tunelab_model,
    max_logit_diffs,
    ratio_stats,
    write_hf_folder,
    write_json,
    write_sft_batches,
)


def prepare(preset: str, seed: int, threads: int, workdir: Path) -> dict[str, Any]:
    """Weights, config and a Hugging Face folder of one random-init model, every contender's
    starting point; checks that transformers computes the same logits before anything is timed."""
    model = make_tunelab_model(preset, seed)
    tokenizer = bench_tokenizer(model.cfg)
    torch.save(model.state_dict(), workdir / "weights.pt")
    write_json(workdir / "config.json", model.cfg.to_dict())
    write_hf_folder(model, tokenizer, workdir / "hf")
    diffs = max_logit_diffs(model, hf_model=build_hf_model(workdir / "hf"), length=32)
    if max(diffs.values()) > 1e-4:
        raise SystemExit(f"{preset}: transformers does not compute tunelab's function: {diffs}")
    print(f"{preset}: weights check {diffs}", flush=True)
    eot = tokenizer.eos_id
    return {
        "config": str(workdir / "config.json"),
        "weights": str(workdir / "weights.pt"),
        "hf_dir": str(workdir / "hf"),
        "seed": seed,
        "threads": threads,
        "eot": eot,
        "weights_check": diffs,
        "tokenizer": tokenizer,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def plain(base: dict[str, Any]) -> dict[str, Any]:
    """The spec without prepare()'s live objects (the tokenizer stays in the driver)."""
    return {k: v for k, v in base.items() if k not in ("tokenizer", "weights_check")}


def sft_spec(
    args, base: dict[str, Any], workdir: Path, **extra: Any
) -> tuple[dict[str, Any], Callable[[int], float]]:
    """The SFT batches of every repeat written for the workers, their spec, and work(r): the
    effective tokens of repeat r's timed steps."""
    batch_spec, batches = write_sft_batches(args, workdir, tokenizer=base["tokenizer"])
    spec = {**plain(base), **batch_spec, **extra}
    per = args.warmup + args.steps

    def tokens(r: int) -> float:
        return sum(effective_tokens(b) for b in batches[r * per + args.warmup : (r + 1) * per])

    return spec, tokens


def paired_segments(
    names: list[str],
    spec: dict[str, Any],
    workdir: Path,
    repeats: int,
    work: Callable[[int], float],
    unit: str,
) -> dict[str, Any]:
    """`repeats` rounds of one segment per contender (fresh process each, rotated order).

    work(r): the amount of work of repeat r's timed steps (effective tokens, pairs): the same
    for every contender, so a rate ratio is a time ratio for identical work.
    """
    from benchmarks.run import one_shot, rotated

    seconds: dict[str, list[float]] = {n: [] for n in names}
    rss: dict[str, list[float]] = {n: [] for n in names}
    amounts = []
    for r in range(repeats):
        amounts.append(work(r))
        for name in rotated(names, r):
            (out,), peak = one_shot(name, spec, workdir, r, [{}])
            seconds[name].append(out["seconds"])
            rss[name].append(peak)
            rate = amounts[-1] / out["seconds"]
            print(f"  repeat {r} {name}: {rate:.2f} {unit}, {peak:.0f} MiB", flush=True)
    return {
        "work_per_segment": amounts,
        "unit": unit,
        "rates": {n: [a / s for a, s in zip(amounts, v, strict=True)] for n, v in seconds.items()},
        "seconds": seconds,
        "peak_rss_mib_per_repeat": rss,
        "peak_rss_mib": {n: max(v) for n, v in rss.items()},
    }


def paired_ratio(values: dict[str, list[float]], a: str, b: str) -> dict[str, Any]:
    return ratio_stats([x / y for x, y in zip(values[a], values[b], strict=True)])


def start(argv_parser, argv: list[str] | None):
    """Parse, set threads, make `kill` go through the workers' finally blocks, make a workdir."""
    args = argv_parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1 or args.repeats < 1:
        argv_parser.error("--warmup, --steps and --repeats must be >= 1")
    torch.set_num_threads(args.threads)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = args.workdir
    if workdir is None:  # weights and folders of GBs: a temporary workdir goes at exit
        workdir = Path(tempfile.mkdtemp(prefix="tunelab_bench_"))
        atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    return args, workdir


def add_common_args(p) -> None:
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3, help="paired repeats")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before each segment")
    p.add_argument("--steps", type=int, default=2, help="timed steps per segment")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", type=Path, default=BENCH_DIR / "results.json")
    p.add_argument("--readme", type=Path, default=BENCH_DIR / "README.md")
    p.add_argument("--no-readme", action="store_true")
    p.add_argument("--workdir", type=Path, default=None)


def run_info(args) -> dict[str, Any]:
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_average_before": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "settings": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in ("out", "readme", "workdir", "no_readme")
        },
    }


def save_section(out: Path, section: str, data: dict[str, Any], headline: dict[str, Any]) -> None:
    """Merge `data` into results.json[section] and the headline keys at the top level."""
    results = json.loads(out.read_text(encoding="utf-8")) if out.exists() else {}
    results[section] = {**results.get(section, {}), **data}
    results.update(headline)
    tmp = out.with_suffix(".json.tmp")
    write_json(tmp, results)
    os.replace(tmp, out)


def target_table(stats: dict[str, dict[str, Any] | None], targets: dict[str, tuple]) -> list[str]:
    lines = [
        "| figure | median | min | max | n | target | met |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, (op, goal) in targets.items():
        st = stats.get(key)
        if st is None:
            lines.append(f"| `{key}` | pending | | | | {op} {goal:.2f} | |")
            continue
        med = st["median"]
        met = med >= goal if op == ">=" else med <= goal
        lines.append(
            f"| `{key}` | {med:.2f} | {st['min']:.2f} | {st['max']:.2f} | {st['n']} "
            f"| {op} {goal:.2f} | {'yes' if met else 'no'} |"
        )
    return lines


def update_block(readme: Path, name: str, text: str) -> None:
    """Replace the README block between `<!-- bench:NAME:start/end -->` (appended if absent)."""
    start_tag, end_tag = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    body = f"{start_tag}\n{text}\n{end_tag}"
    old = readme.read_text(encoding="utf-8") if readme.exists() else "# Benchmarks\n"
    if start_tag in old and end_tag in old:
        head, rest = old.split(start_tag, 1)
        new = head + body + rest.split(end_tag, 1)[1]
    else:
        new = old.rstrip() + "\n\n" + body + "\n"
    tmp = readme.with_suffix(".md.tmp")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, readme)
