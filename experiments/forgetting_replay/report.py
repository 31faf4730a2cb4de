"""Summarise a forgetting/replay multirun: results.csv, results.md (table) and forgetting.png.

    python experiments/forgetting_replay/report.py logs/forgetting_replay/multiruns/<date> \
        --out experiments/forgetting_replay

Reads every job folder under the multirun folder that holds a `metrics.json` (the final metrics
written by `tunelab.train`), its resolved `config.yaml`, `.hydra/overrides.yaml` and, for the
curves in the plot, `csv/metrics.csv`. Rows are grouped by everything the sweep varied besides
the replay ratio (peak LR, schedule, seed, ...); "recovered" is the fraction of the r = 0 job's
forgetting that replay removed in the same group: 1 - forgetting(r) / forgetting(0).
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

COLUMNS = [
    "group",
    "replay_ratio",
    "replay_ratio_realised",
    "peak_lr",
    "schedule",
    "seed",
    "steps",
    "train_tokens",
    "old_loss@0",
    "new_loss@0",
    "old_loss",
    "new_loss",
    "forgetting",
    "adaptation",
    "recovered",
    "job",
]


def _get(cfg: dict[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = cfg
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def find_jobs(sweep_dir: Path) -> list[Path]:
    """Job folders (holding metrics.json) under a multirun folder, in job-number order."""
    jobs = [p.parent for p in sweep_dir.rglob("metrics.json")]

    def key(p: Path) -> tuple[int, str]:
        return (int(p.name), "") if p.name.isdigit() else (sys.maxsize, str(p))

    return sorted(jobs, key=key)


def read_job(job: Path) -> dict[str, Any]:
    metrics = json.loads((job / "metrics.json").read_text())
    cfg_path = job / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text()) if cfg_path.exists() else {}
    ov_path = job / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(ov_path.read_text()) if ov_path.exists() else []
    missing = [k for k in ("forgetting", "adaptation", "val/old_loss") if k not in metrics]
    if missing:
        raise KeyError(f"{job / 'metrics.json'}: no {missing} (was it a task=cpt run with replay?)")
    ratio = _get(cfg, "data.replay_ratio")
    for ov in overrides or []:
        if ov.startswith("data.replay_ratio="):
            ratio = ov.split("=", 1)[1]
    if ratio is None:
        raise KeyError(f"{job}: cannot find data.replay_ratio in config.yaml or overrides")
    steps = int(metrics.get("global_step", 0))
    batch, block = _get(cfg, "data.batch_size"), _get(cfg, "data.block_len")
    return {
        "group": "-",
        "overrides": [ov for ov in overrides or [] if not ov.startswith("data.replay_ratio=")],
        "replay_ratio": float(ratio),
        "replay_ratio_realised": metrics.get("train/replay_ratio_realised"),
        "peak_lr": _get(cfg, "callbacks.lr_schedule.peak_lr") or _get(cfg, "optimizer.lr"),
        "schedule": _get(cfg, "callbacks.lr_schedule.schedule", "cosine"),
        "seed": _get(cfg, "seed"),
        "steps": steps,
        "train_tokens": int(metrics.get("train/tokens_seen", steps * (batch or 0) * (block or 0))),
        "old_loss@0": metrics["val/old_loss@0"],
        "new_loss@0": metrics["val/new_loss@0"],
        "old_loss": metrics["val/old_loss"],
        "new_loss": metrics["val/new_loss"],
        "forgetting": metrics["forgetting"],
        "adaptation": metrics["adaptation"],
        "recovered": None,
        "job": str(job),
    }


def add_recovered(rows: list[dict[str, Any]]) -> None:
    """recovered = 1 - forgetting(r) / forgetting(0) within each group (None without r = 0)."""
    base = {r["group"]: r["forgetting"] for r in rows if r["replay_ratio"] == 0.0}
    for r in rows:
        f0 = base.get(r["group"])
        r["recovered"] = 1.0 - r["forgetting"] / f0 if f0 is not None and f0 > 0 else None


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    jobs = find_jobs(sweep_dir)
    if not jobs:
        raise FileNotFoundError(f"{sweep_dir}: no job folder with a metrics.json")
    rows = [read_job(j) for j in jobs]
    # Overrides that differ between jobs (peak LR, schedule, seed, ...) name a row's group.
    varying = {ov for r in rows for ov in r["overrides"]} - set.intersection(
        *(set(r["overrides"]) for r in rows)
    )
    for r in rows:
        r["group"] = " ".join(sorted(ov for ov in r.pop("overrides") if ov in varying)) or "-"
        r["job"] = str(Path(r["job"]).relative_to(sweep_dir))
        r["job_path"] = Path(sweep_dir) / r["job"]
    rows.sort(key=lambda r: (r["group"], r["replay_ratio"]))
    add_recovered(rows)
    return rows


def _base_group(group: str) -> str:
    return " ".join(t for t in group.split() if not t.startswith("seed=")) or "-"


def seed_means(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean over jobs that differ only by their seed: one row per (group, ratio), with ranges."""
    buckets: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in rows:
        buckets.setdefault((_base_group(r["group"]), r["replay_ratio"]), []).append(r)
    out = []
    for (group, ratio), rs in sorted(buckets.items()):
        row: dict[str, Any] = {"group": group, "replay_ratio": ratio, "n": len(rs)}
        for k in ("old_loss", "new_loss", "forgetting", "adaptation"):
            vals = [r[k] for r in rs]
            row[k], row[k + "_min"], row[k + "_max"] = sum(vals) / len(vals), min(vals), max(vals)
        out.append(row)
    add_recovered(out)
    return out


def group_order(rows: list[dict[str, Any]], key: str = "group") -> list[str]:
    """Groups by falling forgetting at r = 0 (the forgetting regime first), then by name."""
    f0: dict[str, list[float]] = {}
    for r in rows:
        if r["replay_ratio"] == 0.0:
            f0.setdefault(r[key], []).append(r["forgetting"])
    names = {r[key] for r in rows}
    return sorted(names, key=lambda g: (-sum(f0.get(g, [0.0])) / len(f0.get(g, [0.0])), g))


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r[k] is None else r[k]) for k in COLUMNS})


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:+.{digits}f}" if isinstance(v, float) else str(v)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """ratio, old loss, new loss, forgetting, adaptation, recovered (one table per group)."""
    out = []
    means = seed_means(rows)
    if any(m["n"] > 1 for m in means):
        out.append("**Mean over seeds** (min to max in brackets)\n")
        out.append(
            "| replay ratio r | seeds | old loss | new loss | forgetting | adaptation "
            "| forgetting recovered vs r = 0 |"
        )
        out.append("|---:|---:|---:|---:|---:|---:|---:|")
        order = group_order(means)
        for m in sorted(means, key=lambda m: (order.index(m["group"]), m["replay_ratio"])):
            rec = "n/a" if m["recovered"] is None else f"{100 * m['recovered']:.0f}%"
            label = "" if m["group"] == "-" else f" ({m['group']})"
            spans = {
                k: f" [{_fmt(m[k + '_min'])}, {_fmt(m[k + '_max'])}]" if m["n"] > 1 else ""
                for k in ("forgetting", "adaptation")
            }
            out.append(
                f"| {m['replay_ratio']:g}{label} | {m['n']} | {m['old_loss']:.4f} "
                f"| {m['new_loss']:.4f} | {_fmt(m['forgetting'])}{spans['forgetting']} "
                f"| {_fmt(m['adaptation'])}{spans['adaptation']} | {rec} |"
            )
        out.append("")
    groups = group_order(rows)
    for g in groups:
        sub = [r for r in rows if r["group"] == g]
        if len(groups) > 1:
            out.append(f"**{'experiment defaults' if g == '-' else g}**\n")
        s = sub[0]
        out.append(
            f"Step 0 (before any update): old loss {s['old_loss@0']:.4f}, "
            f"new loss {s['new_loss@0']:.4f}.\n"
        )
        out.append(
            "| replay ratio r | realised | old loss | new loss | forgetting | adaptation "
            "| forgetting recovered vs r = 0 |"
        )
        out.append("|---:|---:|---:|---:|---:|---:|---:|")
        for r in sub:
            rec = "n/a" if r["recovered"] is None else f"{100 * r['recovered']:.0f}%"
            realised = r["replay_ratio_realised"]
            out.append(
                f"| {r['replay_ratio']:g} | {'n/a' if realised is None else f'{realised:.4f}'} "
                f"| {r['old_loss']:.4f} | {r['new_loss']:.4f} | {_fmt(r['forgetting'])} "
                f"| {_fmt(r['adaptation'])} | {rec} |"
            )
        out.append("")
    return "\n".join(out)


def read_curve(job: Path) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of val/old_loss and val/new_loss at every validation, from csv/metrics.csv."""
    path = job / "csv" / "metrics.csv"
    curves: dict[str, list[tuple[int, float]]] = {"val/old_loss": [], "val/new_loss": []}
    if not path.exists():
        return curves
    with open(path) as f:
        for row in csv.DictReader(f):
            for k, pts in curves.items():
                if row.get(k):
                    step = int(row["step"])
                    # Validation after the last step is logged at (steps - 1): plot it at steps.
                    pts.append((step, float(row[k])))
    for k, pts in curves.items():
        curves[k] = [(s + 1 if i else s, v) for i, (s, v) in enumerate(pts)]
    return curves


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    xs_all = sorted({r["replay_ratio"] for r in rows})
    # Symmetric-log x axis: the interesting part is the first few percent of replay.
    means = seed_means(rows)
    bases = group_order(means)
    for i, g in enumerate(bases):
        sub = [m for m in means if m["group"] == g]
        xs = [m["replay_ratio"] for m in sub]
        seeds = max(m["n"] for m in sub)
        label = ("" if len(bases) == 1 else f" ({g})") + (
            f" (mean of {seeds} seeds)" if seeds > 1 else ""
        )
        style = ("-", "--") if i == 0 else ("-.", ":")
        colors = (f"C{3 + 2 * i}", f"C{2 * i}")
        for key, marker, ls, color in (
            ("forgetting", "o", style[0], colors[0]),
            ("adaptation", "s", style[1], colors[1]),
        ):
            ax1.plot(xs, [m[key] for m in sub], marker + ls, color=color, label=key + label)
            if seeds > 1:  # every job of the group as a faint point
                jobs = [r for r in rows if _base_group(r["group"]) == g]
                ax1.scatter(
                    [r["replay_ratio"] for r in jobs],
                    [r[key] for r in jobs],
                    s=12,
                    color=color,
                    alpha=0.4,
                )
    ax1.axhline(0.0, color="grey", lw=0.8)
    ax1.set_xscale("symlog", linthresh=0.01)
    ax1.set_xlim(-0.002, max(xs_all) * 1.15 if xs_all else 1.0)
    ax1.set_xticks(xs_all)
    ax1.set_xticklabels([f"{x:g}" for x in xs_all])
    ax1.set_xlabel("replay ratio r (fraction of training blocks from the old domain)")
    ax1.set_ylabel("loss change (nats/token)")
    ax1.set_title(
        "forgetting = old loss - old loss@0; adaptation = new loss@0 - new loss", fontsize=9
    )
    ax1.legend(fontsize=8)
    cmap = plt.get_cmap("viridis")
    # Curves of the group that forgets most at r = 0 (the regime the study is about).
    zero = [r for r in rows if r["replay_ratio"] == 0.0] or rows
    shown = max(zero, key=lambda r: r["forgetting"])["group"]
    first = [r for r in rows if r["group"] == shown]
    for i, r in enumerate(sorted(first, key=lambda r: r["replay_ratio"])):
        curves = read_curve(r.get("job_path", Path(r["job"])))
        color = cmap(i / max(1, len(first) - 1))
        for key, style in (("val/old_loss", "-"), ("val/new_loss", ":")):
            pts = curves[key]
            if pts:
                ax2.plot(*zip(*pts, strict=True), style, marker=".", color=color)
        ax2.plot([], [], "-", color=color, label=f"r = {r['replay_ratio']:g}")
    ax2.plot([], [], "-", color="k", label="old (prose)")
    ax2.plot([], [], ":", color="k", label="new (Python)")
    ax2.set_xlabel("optimizer step")
    ax2.set_ylabel("held-out loss (nats/token)")
    title = "held-out loss during continued pretraining"
    ax2.set_title(title + ("" if shown == "-" else f" ({shown})"), fontsize=9)
    ax2.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("sweep_dir", type=Path, help="the multirun folder (logs/.../multiruns/<date>)")
    p.add_argument("--out", type=Path, default=None, help="where to write (default: sweep_dir)")
    p.add_argument("--no-plot", action="store_true", help="skip forgetting.png")
    args = p.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"error: {args.sweep_dir}: not a folder", file=sys.stderr)
        return 1
    try:
        rows = collect(args.sweep_dir)
    except (FileNotFoundError, KeyError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 1
    out = args.out or args.sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "results.csv")
    table = markdown_table(rows)
    (out / "results.md").write_text(table + "\n")
    if not args.no_plot:
        plot(rows, out / "forgetting.png")
    print(table)
    print(
        f"wrote {out / 'results.csv'}, {out / 'results.md'}"
        + ("" if args.no_plot else f", {out / 'forgetting.png'}")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
