"""Summarise forgetting/replay sweeps: results.csv (one row per job), results.md (means with 95%
t-intervals over seeds, per setting and replay ratio) and the plots.

    python experiments/forgetting_replay/report.py logs/forgetting_cpt/multiruns/<date> [more ...] \
        --base experiments/forgetting_replay/base --out experiments/forgetting_replay

Reads every job folder below the given folders that holds a `metrics.json` (written by
`tunelab.train`), its resolved `config.yaml`, `.hydra/overrides.yaml`, `choice_eval.json` and, for
the curves, `csv/metrics.csv`. A job's *setting* is its method (full or LoRA, from the resolved
config), its peak LR and any other override that differs between jobs, seed and replay ratio
aside; seeds of a setting and ratio are averaged (stats.py: mean ± t(0.975, n-1)·s/√n).

Loss (nats/token, held-out blocks): forgetting = old loss - old loss@0, adaptation = new loss@0 -
new loss. Multiple choice (accuracy): MC forgetting = old-set acc@0 - old-set acc, MC adaptation =
new-set acc - new-set acc@0; acc@0 is the job's own step-0 measurement (ChoiceEval at_start) or,
without one, the base model's (`--base`: the run folder of the base, whose final model every job
starts from). "reduction" = 1 - mean F(r) / mean F(0) within a setting (Ibrahim et al.'s measure);
"paired" = the mean over seeds of 1 - F(r) / F(0) with the r = 0 job of the same seed.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stats import Interval, reduction, t_interval  # noqa: E402

# Overrides that do not name a setting: the sweep's own keys, and what changes how fast or in
# how much memory a job runs but not what it computes (the malloc policy, threads).
IGNORED_OVERRIDES = (
    "data.replay_ratio=",
    "seed=",
    "optimizer.lr=",
    "hparams_search=",
    "callbacks.cpu_allocator.policy=",
)
COLUMNS = [
    "setting",
    "method",
    "peak_lr",
    "seed",
    "replay_ratio",
    "replay_ratio_realised",
    "old_blocks",
    "steps",
    "train_tokens",
    "old_loss@0",
    "new_loss@0",
    "old_loss",
    "new_loss",
    "forgetting",
    "adaptation",
    "old_acc@0",
    "new_acc@0",
    "old_acc",
    "new_acc",
    "mc_forgetting",
    "mc_adaptation",
    "reduction_paired",
    "job",
]
# (row key, table heading) of the quantities averaged over seeds
MEASURES = [
    ("forgetting", "forgetting (loss)"),
    ("adaptation", "adaptation (loss)"),
    ("mc_forgetting", "MC forgetting (old acc drop)"),
    ("mc_adaptation", "MC adaptation (new acc gain)"),
]


def _get(cfg: dict[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = cfg
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def find_jobs(folder: Path) -> list[Path]:
    """Job folders (holding metrics.json) below a folder, in path order (numbers numerically)."""

    def key(p: Path) -> list[tuple[int, str]]:
        return [(int(s), "") if s.isdigit() else (sys.maxsize, s) for s in p.parts]

    return sorted((p.parent for p in folder.rglob("metrics.json")), key=key)


def base_accuracies(base: Path | None) -> dict[str, float]:
    """choice/<set>/acc of the base run's final model (its metrics.json), {} without one."""
    if base is None:
        return {}
    path = base / "metrics.json" if base.is_dir() else base
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.json of the base run")
    metrics = json.loads(path.read_text())
    return {
        k: float(v) for k, v in metrics.items() if k.startswith("choice/") and k.endswith("/acc")
    }


def step0_accuracies(job: Path) -> dict[str, float]:
    """choice/<set>/acc measured at step 0 by the job itself (ChoiceEval at_start), if it did."""
    path = job / "choice_eval.json"
    if not path.is_file():
        return {}
    history = json.loads(path.read_text()).get("history", [])
    first = next((h for h in history if h.get("step") == 0), None)
    return {k: float(v) for k, v in (first or {}).items() if k.endswith("/acc")}


def read_job(job: Path, base_acc: dict[str, float], old_set: str, new_set: str) -> dict[str, Any]:
    metrics = json.loads((job / "metrics.json").read_text())
    cfg_path = job / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text()) if cfg_path.exists() else {}
    ov_path = job / ".hydra" / "overrides.yaml"
    overrides = (yaml.safe_load(ov_path.read_text()) if ov_path.exists() else None) or []
    missing = [k for k in ("forgetting", "adaptation", "val/old_loss") if k not in metrics]
    if missing:
        raise KeyError(f"{job / 'metrics.json'}: no {missing} (was it a task=cpt run with replay?)")
    ratio = _get(cfg, "data.replay_ratio")
    for ov in overrides:
        if ov.startswith("data.replay_ratio="):
            ratio = ov.split("=", 1)[1]
    if ratio is None:
        raise KeyError(f"{job}: cannot find data.replay_ratio in config.yaml or overrides")
    steps = int(metrics.get("global_step", 0))
    batch, block = _get(cfg, "data.batch_size"), _get(cfg, "data.block_len")
    realised = metrics.get("train/replay_ratio_realised")
    acc0 = {**base_acc, **step0_accuracies(job)}
    row: dict[str, Any] = {
        "overrides": [ov for ov in overrides if not ov.startswith(IGNORED_OVERRIDES)],
        "method": "lora" if _get(cfg, "model.lora") else "full",
        "peak_lr": _get(cfg, "callbacks.lr_schedule.peak_lr") or _get(cfg, "optimizer.lr"),
        "seed": _get(cfg, "seed"),
        "replay_ratio": float(ratio),
        "replay_ratio_realised": realised,
        "old_blocks": (round(realised * steps * batch) if realised is not None and batch else None),
        "steps": steps,
        "train_tokens": int(metrics.get("train/tokens_seen", steps * (batch or 0) * (block or 0))),
        "old_loss@0": metrics["val/old_loss@0"],
        "new_loss@0": metrics["val/new_loss@0"],
        "old_loss": metrics["val/old_loss"],
        "new_loss": metrics["val/new_loss"],
        "forgetting": metrics["forgetting"],
        "adaptation": metrics["adaptation"],
        "job": str(job),
        "job_path": job,
    }
    for side, name in (("old", old_set), ("new", new_set)):
        key = f"choice/{name}/acc"
        row[f"{side}_acc"] = metrics.get(key)
        row[f"{side}_acc@0"] = acc0.get(key)
    row["mc_forgetting"] = _diff(row["old_acc@0"], row["old_acc"])
    row["mc_adaptation"] = _diff(row["new_acc"], row["new_acc@0"])
    return row


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def collect(
    folders: list[Path],
    base: Path | None = None,
    old_set: str = "old_cloze",
    new_set: str = "new_code",
) -> list[dict[str, Any]]:
    base_acc = base_accuracies(base)
    rows = []
    for folder in folders:
        jobs = find_jobs(folder)
        if not jobs:
            raise FileNotFoundError(f"{folder}: no job folder with a metrics.json")
        for j in jobs:
            row = read_job(j, base_acc, old_set, new_set)
            row["job"] = str(j.relative_to(folder.parent))
            rows.append(row)
    # Overrides that differ between jobs (besides seed, ratio, LR) also name a setting.
    sets = [set(r["overrides"]) for r in rows]
    varying = set.union(*sets) - set.intersection(*sets)
    for r in rows:
        extra = " ".join(sorted(ov for ov in r.pop("overrides") if ov in varying))
        r["setting"] = f"{r['method']} lr={r['peak_lr']:g}" + (f" {extra}" if extra else "")
    rows.sort(key=lambda r: (r["setting"], r["replay_ratio"], str(r["seed"])))
    add_paired_reduction(rows)
    return rows


def add_paired_reduction(rows: list[dict[str, Any]]) -> None:
    """Per job: 1 - F(r) / F(0) against the r = 0 job of the same setting *and seed* (same
    validation blocks and data order), None without one or without forgetting there."""
    zero = {(r["setting"], str(r["seed"])): r["forgetting"] for r in rows if r["replay_ratio"] == 0}
    for r in rows:
        f0 = zero.get((r["setting"], str(r["seed"])))
        r["reduction_paired"] = None if f0 is None else reduction(r["forgetting"], f0)


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (setting, ratio): a t-interval per measure, reductions vs r = 0."""
    buckets: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in rows:
        buckets.setdefault((r["setting"], r["replay_ratio"]), []).append(r)
    out = []
    for (setting, ratio), rs in sorted(buckets.items()):
        s: dict[str, Any] = {
            "setting": setting,
            "method": rs[0]["method"],
            "peak_lr": rs[0]["peak_lr"],
            "replay_ratio": ratio,
            "n": len(rs),
            "seeds": sorted(str(r["seed"]) for r in rs),
            "old_blocks": rs[0]["old_blocks"],
        }
        for key in [k for k, _ in MEASURES] + ["reduction_paired"]:
            vals = [r[key] for r in rs if r.get(key) is not None]
            s[key] = t_interval(vals) if vals else None
        out.append(s)
    zero = {s["setting"]: s for s in out if s["replay_ratio"] == 0.0}
    for s in out:
        z = zero.get(s["setting"])
        for key, name in (("forgetting", "reduction"), ("mc_forgetting", "mc_reduction")):
            f, f0 = s[key], (z or {}).get(key)
            s[name] = reduction(f.mean, f0.mean) if f is not None and f0 is not None else None
    return out


def fmt_interval(iv: Interval | None, digits: int = 3, scale: float = 1.0) -> str:
    if iv is None:
        return "n/a"
    text = f"{scale * iv.mean:+.{digits}f}"
    if iv.half is not None:
        text += f" ± {scale * iv.half:.{digits}f}"
    return text


def _pct(v: float | None) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{100 * v:.0f}%"


def markdown_table(summary: list[dict[str, Any]]) -> str:
    """Means ± 95% t half-widths, one table per setting."""
    out = []
    for setting in sorted({s["setting"] for s in summary}):
        sub = [s for s in summary if s["setting"] == setting]
        out.append(f"**{setting}** (mean ± 95% t-interval half-width over seeds)\n")
        out.append(
            "| r | seeds | old blocks | forgetting (loss) | adaptation (loss) | reduction "
            "| reduction, paired by seed | MC forgetting (pts) | MC adaptation (pts) "
            "| MC reduction |"
        )
        out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for s in sub:
            out.append(
                f"| {s['replay_ratio']:g} | {s['n']} "
                f"| {'n/a' if s['old_blocks'] is None else s['old_blocks']} "
                f"| {fmt_interval(s['forgetting'])} | {fmt_interval(s['adaptation'])} "
                f"| {_pct(s['reduction'])} "
                f"| {fmt_interval(s['reduction_paired'], 0, 100)}"
                f"{'' if s['reduction_paired'] is None else '%'} "
                f"| {fmt_interval(s['mc_forgetting'], 1, 100)} "
                f"| {fmt_interval(s['mc_adaptation'], 1, 100)} | {_pct(s['mc_reduction'])} |"
            )
        out.append("")
    return "\n".join(out)


def bars(summary: list[dict[str, Any]]) -> list[str]:
    """The issue's checks per setting: forgetting at r = 0 >= 3 seed sd (loss, MC); adaptation
    > 0 at every r (loss and MC, the mean's interval above 0)."""
    lines = []
    for setting in sorted({s["setting"] for s in summary}):
        sub = [s for s in summary if s["setting"] == setting]
        zero = next((s for s in sub if s["replay_ratio"] == 0.0), None)
        for key, label in (("forgetting", "loss"), ("mc_forgetting", "MC")):
            iv = zero and zero[key]
            if iv is None or iv.sd is None:
                lines.append(f"- {setting}: {label} forgetting at r = 0: fewer than 2 seeds")
                continue
            ratio = iv.mean / iv.sd if iv.sd > 0 else math.inf
            lines.append(
                f"- {setting}: {label} forgetting at r = 0 = {iv.mean:+.4f}, seed sd "
                f"{iv.sd:.4f}: {ratio:.1f}x the sd ({'met' if ratio >= 3 else 'NOT met'}: >= 3x)"
            )
        for key, label in (("adaptation", "loss"), ("mc_adaptation", "MC")):
            ivs = [(s["replay_ratio"], s[key]) for s in sub if s[key] is not None]
            low = [r for r, iv in ivs if (iv.lo if iv.lo is not None else iv.mean) <= 0]
            lines.append(
                f"- {setting}: {label} adaptation > 0 (interval above 0) at "
                f"{len(ivs) - len(low)} of {len(ivs)} ratios"
                + (f"; not at r = {', '.join(f'{r:g}' for r in low)}" if low else "")
            )
    return lines


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r[k] is None else r[k]) for k in COLUMNS})
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folders", type=Path, nargs="+", help="multirun folders (or job folders)")
    p.add_argument("--base", type=Path, default=None, help="the base run (its metrics.json)")
    p.add_argument("--old-set", default="old_cloze", help="old-domain ChoiceEval set name")
    p.add_argument("--new-set", default="new_code", help="new-domain ChoiceEval set name")
    p.add_argument("--out", type=Path, default=None, help="where to write (default: 1st folder)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plots")
    args = p.parse_args(argv)
    for folder in args.folders:
        if not folder.is_dir():
            print(f"error: {folder}: not a folder", file=sys.stderr)
            return 1
    try:
        rows = collect(args.folders, args.base, args.old_set, args.new_set)
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 1
    summary = summarise(rows)
    out = args.out or args.folders[0]
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "results.csv")
    text = markdown_table(summary) + "\n**Bars**\n\n" + "\n".join(bars(summary)) + "\n"
    tmp = out / "results.md.tmp"
    tmp.write_text(text)
    tmp.replace(out / "results.md")
    written = [out / "results.csv", out / "results.md"]
    if not args.no_plot:
        from plots import plot_curves, plot_replay

        written += plot_replay(summary, out)
        written += plot_curves(rows, out)
    print(text)
    print("wrote " + ", ".join(str(w) for w in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
