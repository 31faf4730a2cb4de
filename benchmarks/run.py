"""Run the side-by-side benchmarks and write benchmarks/results.json and the README table.

    python -m benchmarks.run --threads 1          # everything (about an hour on 2 shared vCPUs)
    python -m benchmarks.run --figures sft,gen    # a subset; other figures keep their old values
    python -m benchmarks.run --preset tiny-gpt2 --repeats 2 --steps 1 --new-tokens 8 --out /tmp/r.json

Every contender is a worker process (benchmarks/worker.py) holding the same weights; the driver
alternates measured segments between them (paired measurements) and rotates their order every
repeat, so slow drift and other processes on the machine hit all contenders alike.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    BENCH_DIR,
    ROOT,
    effective_tokens,
    gemm_gflops,
    machine,
    make_tunelab_model,
    max_logit_diffs,
    ratio_stats,
    training_flops,
    versions,
    write_json,
    write_sft_batches,
)

PREFIX = "@@BENCH "
README_START = "<!-- bench:results:start -->"
README_END = "<!-- bench:results:end -->"
FIGURES = ("sft", "gen", "dpo")


def have(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


class Worker:
    """A contender's process; `segment()` sends one command and waits for its answer."""

    def __init__(self, name: str, spec: dict[str, Any], workdir: Path, tag: str = "") -> None:
        self.name = name
        spec_path = workdir / f"{name}{tag}.spec.json"
        write_json(spec_path, {k: v for k, v in spec.items() if k != "config_obj"})
        self.log_path = workdir / f"{name}{tag}.log"
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env["WANDB_MODE"] = "disabled"
        self.log = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115 - lives with the worker
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.worker", name, str(spec_path)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
        )
        self.ready = self._read()
        if not self.ready.get("ready"):
            raise RuntimeError(f"{name} failed to start:\n{self.ready.get('error')}")
        self.setup_peak_rss_mib = self.ready["peak_rss_mib"]  # incl. loading the weights
        self.peak_rss_mib = 0.0  # the largest peak while running segments

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(PREFIX):
                return json.loads(line[len(PREFIX) :])
        tail = self.log_path.read_text(encoding="utf-8")[-3000:]
        raise RuntimeError(f"worker {self.name} exited ({self.proc.wait()}):\n{tail}")

    def segment(self, index: int, **kwargs: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": "segment", "index": index, "kwargs": kwargs}))
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        out = self._read()
        if "error" in out:
            raise RuntimeError(f"{self.name} segment {index} failed:\n{out['error']}")
        self.peak_rss_mib = max(self.peak_rss_mib, out["peak_rss_mib"])
        return out

    def close(self) -> None:
        try:
            if self.proc.poll() is None and self.proc.stdin is not None:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
        finally:
            self.log.close()


def start_workers(names: list[str], spec: dict[str, Any], workdir: Path) -> dict[str, Worker]:
    workers: dict[str, Worker] = {}
    try:
        for n in names:
            print(f"  starting {n} ...", flush=True)
            workers[n] = Worker(n, spec, workdir)
    except Exception:
        for w in workers.values():
            w.close()
        raise
    return workers


def one_shot(
    name: str, spec: dict[str, Any], workdir: Path, index: int, calls: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], float]:
    """Segment `index` of a contender in a fresh process of its own (training figures).

    One training process at a time keeps the machine's memory free (three 124M trainers side
    by side do not fit beside other work on a 23 GiB machine), and the process's peak RSS is
    that contender's alone. `calls` are the segment's keyword arguments, run in order.
    """
    worker = Worker(name, {**spec, "first_segment": index, "segments": 1}, workdir, f".{index}")
    try:
        outs = [worker.segment(index, **kw) for kw in calls]
    finally:
        worker.close()
    return outs, worker.peak_rss_mib


def rotated(items: list[Any], r: int) -> list[Any]:
    k = r % len(items)
    return items[k:] + items[:k]


# ----------------------------------------------------------------------------- figures


def run_sft(args, base: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """SFT effective tokens/s (+ the Lightning-vs-plain-loop overhead and FLOP/s)."""
    batch_spec, batches = write_sft_batches(args, workdir)
    spec = {**base, **batch_spec}
    per_segment = args.warmup + args.steps
    names = ["tunelab_sft"]
    if have("llms_from_scratch"):
        names.append("seed_sft")
    if have("trl", "transformers", "datasets"):
        names.append("trl_sft")
    keys = ["tunelab_sft:lightning", "tunelab_sft:plain"] + names[1:]
    seconds: dict[str, list[float]] = {k: [] for k in keys}
    rss: dict[str, float] = {}
    tokens, flops = [], []
    cfg = base["config_obj"]
    for r in range(args.repeats):
        timed = batches[r * per_segment + args.warmup : (r + 1) * per_segment]
        tokens.append(sum(effective_tokens(b) for b in timed))
        flops.append(training_flops(cfg, [len(ex.ids) for b in timed for ex in b]))
        for name in rotated(names, r):
            modes = rotated(["lightning", "plain"], r) if name == "tunelab_sft" else [None]
            calls = [{"mode": m} if m else {} for m in modes]
            outs, _ = one_shot(name, spec, workdir, r, calls)
            for mode, out in zip(modes, outs, strict=True):
                key = f"{name}:{mode}" if mode else name
                seconds[key].append(out["seconds"])
                rss[key] = max(rss.get(key, 0.0), out["peak_rss_mib"])  # this segment's peak
                rate = tokens[-1] / out["seconds"]
                print(
                    f"  sft repeat {r} {key}: {rate:.1f} tok/s, {out['peak_rss_mib']:.0f} MiB",
                    flush=True,
                )
    tps = {k: [t / s for t, s in zip(tokens, v, strict=True)] for k, v in seconds.items()}
    tun = tps["tunelab_sft:lightning"]
    out: dict[str, Any] = {
        "effective_tokens_per_segment": tokens,
        "useful_flops_per_segment": flops,
        "tokens_per_s": tps,
        "seconds": seconds,
        "peak_rss_mib": rss,
        "ratios": {},
    }
    if "seed_sft" in tps:
        out["ratios"]["vs_seed"] = ratio_stats(
            [a / b for a, b in zip(tun, tps["seed_sft"], strict=True)]
        )
    if "trl_sft" in tps:
        out["ratios"]["vs_trl"] = ratio_stats(
            [a / b for a, b in zip(tun, tps["trl_sft"], strict=True)]
        )
    light, plain = seconds["tunelab_sft:lightning"], seconds["tunelab_sft:plain"]
    out["lightning_overhead"] = ratio_stats([a / b - 1 for a, b in zip(light, plain, strict=True)])
    out["flops_per_s"] = {
        k: [f / s for f, s in zip(flops, v, strict=True)] for k, v in seconds.items()
    }
    return out


def run_gen(args, base: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Greedy generation tokens/s for `new_tokens` new tokens from one Alpaca prompt."""
    from tunelab.data.prompts import get_style
    from tunelab.data.sft import SFTDataModule
    from tunelab.models.tokenizer import gpt2_tokenizer

    dm = SFTDataModule(seed=args.seed)
    record = dm.load_splits()["test"][0]
    prompt = gpt2_tokenizer().encode(get_style("alpaca").prompt(record))
    spec = {**base, "prompt": prompt, "new_tokens": args.new_tokens}
    names = ["tunelab_gen"]
    if have("llms_from_scratch"):
        names += ["seed_kv_gen", "seed_gen"]
    workers = start_workers(names, spec, workdir)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    outputs: dict[str, list[int]] = {}
    try:
        for r in range(args.gen_repeats):
            for name in rotated(names, r):
                if name == "seed_gen" and r >= args.gen_repeats_nocache:
                    continue
                out = workers[name].segment(r)
                seconds[name].append(out["seconds"])
                outputs.setdefault(name, out["tokens"])
                rate = args.new_tokens / out["seconds"]
                print(f"  gen repeat {r} {name}: {rate:.1f} tok/s", flush=True)
    finally:
        for w in workers.values():
            w.close()
    tps = {k: [args.new_tokens / s for s in v] for k, v in seconds.items()}
    tun = tps["tunelab_gen"]
    same = {
        n: sum(a == b for a, b in zip(outputs[n], outputs["tunelab_gen"], strict=True))
        for n in outputs
        if n != "tunelab_gen"
    }
    res: dict[str, Any] = {
        "prompt_tokens": len(prompt),
        "new_tokens": args.new_tokens,
        "tokens_per_s": tps,
        "seconds": seconds,
        "peak_rss_mib": {n: w.peak_rss_mib for n, w in workers.items()},
        "tokens_equal_to_tunelab": same,
        "ratios": {},
    }
    for peer, key in (("seed_gen", "vs_seed"), ("seed_kv_gen", "vs_seed_kv")):
        if peer in tps:
            res["ratios"][key] = ratio_stats([a / b for a, b in zip(tun, tps[peer], strict=False)])
    return res


def run_dpo(args, base: dict[str, Any], workdir: Path) -> dict[str, Any]:
    from benchmarks import dpo as dpo_bench

    return dpo_bench.run(args, base, workdir, one_shot, rotated)


# ----------------------------------------------------------------------------- results


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """The headline keys (medians over paired repeats); their spread is in `stats`."""
    stats: dict[str, Any] = {}
    sft, gen, dpo = results.get("sft", {}), results.get("gen", {}), results.get("dpo", {})
    pick = {
        "sft_tokens_per_s_ratio_vs_seed": sft.get("ratios", {}).get("vs_seed"),
        "sft_tokens_per_s_ratio_vs_trl": sft.get("ratios", {}).get("vs_trl"),
        "dpo_pairs_per_s_ratio_vs_trl": dpo.get("ratios", {}).get("vs_trl"),
        "dpo_peak_rss_ratio_vs_trl": dpo.get("ratios", {}).get("peak_rss_vs_trl"),
        "dpo_lowmem_pairs_per_s_ratio_vs_trl": dpo.get("ratios", {}).get("lowmem_vs_trl"),
        "dpo_lowmem_peak_rss_ratio_vs_trl": dpo.get("ratios", {}).get("lowmem_peak_rss_vs_trl"),
        "generate_tokens_per_s_ratio_vs_seed": gen.get("ratios", {}).get("vs_seed"),
        "generate_tokens_per_s_ratio_vs_seed_kv": gen.get("ratios", {}).get("vs_seed_kv"),
        "lightning_overhead_fraction": sft.get("lightning_overhead"),
    }
    gemm = results.get("gemm", {}).get("peak_gflops")
    if sft and gemm:
        pick["gemm_peak_fraction"] = ratio_stats(
            [f / (gemm * 1e9) for f in sft["flops_per_s"]["tunelab_sft:lightning"]]
        )
    out: dict[str, Any] = {}
    for key, st in pick.items():
        out[key] = None if st is None else round(st["median"], 4)
        if st is not None:
            stats[key] = st
    out["stats"] = stats
    return out


TARGETS = {
    "sft_tokens_per_s_ratio_vs_seed": (">=", 1.5),
    "sft_tokens_per_s_ratio_vs_trl": (">=", 1.0),
    "dpo_pairs_per_s_ratio_vs_trl": (">=", 1.3),
    "dpo_peak_rss_ratio_vs_trl": ("<=", 0.6),
    "dpo_lowmem_pairs_per_s_ratio_vs_trl": (">=", 1.3),
    "dpo_lowmem_peak_rss_ratio_vs_trl": ("<=", 0.6),
    "generate_tokens_per_s_ratio_vs_seed": (">=", 3.0),
    "generate_tokens_per_s_ratio_vs_seed_kv": (">=", 1.0),
    "lightning_overhead_fraction": ("<=", 0.05),
    "gemm_peak_fraction": (">=", 0.70),
}


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is None:
        return "—"
    return f"{100 * x:.1f}%" if pct else f"{x:.2f}"


def table(results: dict[str, Any]) -> str:
    """The README table: one row per headline key, plus absolute figures and peak RSS."""
    s = results["summary"]
    lines = [
        "| figure | median | min | max | n | target | met |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, (op, goal) in TARGETS.items():
        st = s["stats"].get(key)
        pct = key in ("lightning_overhead_fraction", "gemm_peak_fraction")
        if st is None:
            lines.append(f"| `{key}` | pending | | | | {op} {_fmt(goal, pct)} | |")
            continue
        med = st["median"]
        met = med >= goal if op == ">=" else med <= goal
        lines.append(
            f"| `{key}` | {_fmt(med, pct)} | {_fmt(st['min'], pct)} | {_fmt(st['max'], pct)} "
            f"| {st['n']} | {op} {_fmt(goal, pct)} | {'yes' if met else 'no'} |"
        )
    headline = {
        ("sft", "vs_seed"),
        ("sft", "vs_trl"),
        ("dpo", "vs_trl"),
        ("dpo", "peak_rss_vs_trl"),
        ("gen", "vs_seed"),
        ("gen", "vs_seed_kv"),
    }
    others = [
        (fig, key, st)
        for fig in ("sft", "gen", "dpo")
        for key, st in results.get(fig, {}).get("ratios", {}).items()
        if (fig, key) not in headline
    ]
    if others:
        lines += ["", "| other ratio | median | min | max | n |", "| --- | --- | --- | --- | --- |"]
        for fig, key, st in others:
            lines.append(
                f"| {fig} `{key}` | {_fmt(st['median'])} | {_fmt(st['min'])} | "
                f"{_fmt(st['max'])} | {st['n']} |"
            )
    lines += ["", "| contender | figure | median | peak RSS (MiB) |", "| --- | --- | --- | --- |"]
    import statistics

    for fig, unit in (("sft", "tokens/s"), ("gen", "tokens/s"), ("dpo", "pairs/s")):
        res = results.get(fig)
        if not res:
            continue
        rates = res.get("tokens_per_s") or res.get("pairs_per_s") or {}
        for name, vals in rates.items():
            rss = res["peak_rss_mib"].get(name) or res["peak_rss_mib"].get(name.split(":")[0])
            rss_s = f"{rss:.0f}" if rss else "—"
            lines.append(f"| {name} | {fig} {unit} | {statistics.median(vals):.1f} | {rss_s} |")
    m, v = results["machine"], results["versions"]
    gemm = results.get("gemm", {})
    lines += [
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, "
        f"{m['memory_gib']} GiB; load average at start {m.get('load_average_at_start')}; "
        f"fp32 GEMM peak {gemm.get('peak_gflops', 0):.1f} GFLOP/s "
        f"(measurements {gemm.get('measurements')}).",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val) + ".",
    ]
    keys = ("repeats", "steps", "warmup", "batch_size", "dpo_batch_size", "new_tokens", "threads")
    for fig in ("sft", "gen", "dpo"):
        run = results.get(fig, {}).get("run")
        if run:
            st = run["settings"]
            lines.append(
                f"{fig}: run {run['date']}, load average before {run['load_average_before']}, "
                + ", ".join(f"{k} {st[k]}" for k in keys if k in st)
                + (f", no-cache repeats {st['gen_repeats_nocache']}" if fig == "gen" else "")
                + "."
            )
    lines.append(f"Last invocation: {json.dumps(results['settings'])}, {results['date']}.")
    return "\n".join(lines)


def update_readme(path: Path, text: str) -> None:
    body = f"{README_START}\n{text}\n{README_END}"
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\n"
    if README_START in old and README_END in old:
        head, rest = old.split(README_START, 1)
        _, tail = rest.split(README_END, 1)
        new = head + body + tail
    else:
        new = old.rstrip() + "\n\n" + body + "\n"
    path.write_text(new, encoding="utf-8")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--figures", default=",".join(FIGURES))
    p.add_argument("--preset", default="gpt2-124m")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3, help="paired repeats (SFT, DPO)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before each segment")
    p.add_argument("--steps", type=int, default=3, help="timed steps per segment")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--gen-repeats", type=int, default=3)
    p.add_argument(
        "--gen-repeats-nocache",
        type=int,
        default=2,
        help="repeats of the seed's cache-free generate (the slowest contender by far)",
    )
    p.add_argument("--dpo-batch-size", type=int, default=4)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", type=Path, default=BENCH_DIR / "results.json")
    p.add_argument("--readme", type=Path, default=BENCH_DIR / "README.md")
    p.add_argument("--no-readme", action="store_true")
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args(argv)
    if args.warmup < 1 or args.steps < 1 or args.repeats < 1:
        p.error("--warmup, --steps and --repeats must be >= 1 (the clock starts after warmup)")
    figures = [f for f in args.figures.split(",") if f]
    unknown = sorted(set(figures) - set(FIGURES))
    if unknown:
        p.error(f"unknown figures {unknown}; choose from {', '.join(FIGURES)}")
    torch.set_num_threads(args.threads)
    # a plain `kill` ends the run through the finally blocks that close the workers
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tunelab_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    if args.out.exists():  # keep figures not rerun this time
        results = json.loads(args.out.read_text(encoding="utf-8"))
    results.update(
        {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": machine(),
            "versions": versions(),
            "settings": {
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in vars(args).items()
                if k not in ("out", "readme", "workdir", "no_readme")
            },
        }
    )

    # identical weights for every contender, checked before anything is timed
    model = make_tunelab_model(args.preset, args.seed)
    torch.save(model.state_dict(), workdir / "weights.pt")
    write_json(workdir / "config.json", model.cfg.to_dict())
    base = {
        "config": str(workdir / "config.json"),
        "weights": str(workdir / "weights.pt"),
        "seed": args.seed,
        "threads": args.threads,
        "config_obj": model.cfg,
    }
    peers: dict[str, Any] = {}
    if have("llms_from_scratch"):
        from benchmarks.common import build_seed_model

        peers["seed_model"] = build_seed_model(model.state_dict(), model.cfg)
    if have("transformers"):
        from benchmarks.common import build_hf_model
        from tunelab.models.loaders.hf import save_hf_gpt2

        save_hf_gpt2(model, workdir / "hf")
        base["hf_dir"] = str(workdir / "hf")
        peers["hf_model"] = build_hf_model(workdir / "hf")
    diffs = max_logit_diffs(model, **peers)
    results["weights_check"] = {"max_abs_logit_diff": diffs, "tolerance": 1e-4}
    bad = {k: v for k, v in diffs.items() if v > 1e-4}
    if bad:
        raise SystemExit(f"contenders do not compute the same function: {bad}")
    print(f"weights check: {diffs}", flush=True)
    del model, peers

    gemm = [gemm_gflops()]
    runners = {"sft": run_sft, "gen": run_gen, "dpo": run_dpo}
    for fig in figures:
        print(f"== {fig}", flush=True)
        load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        started = time.strftime("%Y-%m-%d %H:%M")
        results[fig] = runners[fig](args, dict(base), workdir)
        results[fig]["run"] = {  # figures can come from different runs (--figures)
            "date": started,
            "load_average_before": load,
            "settings": results["settings"],
            "gemm_gflops_before": round(gemm[-1], 1),
        }
        gemm.append(gemm_gflops())
        # written after every figure, so a long run that is cut short keeps what it measured
        results["gemm"] = {"peak_gflops": max(gemm), "measurements": [round(g, 1) for g in gemm]}
        results["summary"] = summary(results)
        results.update({k: v for k, v in results["summary"].items() if k != "stats"})
        write_json(args.out, _jsonable(results))
        if not args.no_readme:
            update_readme(args.readme, table(results))
    print(json.dumps({k: v for k, v in results["summary"].items() if k != "stats"}, indent=2))
    return results


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items() if k != "config_obj"}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


if __name__ == "__main__":
    main()
