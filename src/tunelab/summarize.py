"""Collect a multirun's jobs into one table: `python -m tunelab.summarize <multirun folder>`.

For every job folder (holding `.hydra/overrides.yaml` and `metrics.json`) it takes the job's
overrides and final metrics and writes `summary.csv` and `summary.md` into the multirun folder.
Jobs without metrics (failed or still running) are listed with status `missing metrics`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from tunelab.utils.io import atomic_write_text, write_csv

DEFAULT_METRICS = (
    "val/loss",
    "train/loss_epoch",
    "val/perplexity",
    "forgetting",
    "adaptation",
    "val/old_loss",
    "val/new_loss",
    "judge/mean",
    "global_step",
)


def job_dirs(folder: Path) -> list[Path]:
    jobs = [p.parent.parent for p in folder.rglob(".hydra/overrides.yaml")]
    # Numeric job folders sort by number (0, 1, ..., 10), not as strings.
    return sorted(set(jobs), key=lambda p: (len(p.name), p.name))


def collect(folder: str | Path, swept_only: bool = True) -> list[dict[str, Any]]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"multirun folder not found: {folder}")
    jobs = job_dirs(folder)
    if not jobs:
        raise FileNotFoundError(f"{folder}: no job folders (no */.hydra/overrides.yaml)")
    rows = []
    for job in jobs:
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
        row: dict[str, Any] = {"job": str(job.relative_to(folder)) or "."}
        for o in overrides:
            key, _, value = o.partition("=")
            row[key.lstrip("+~")] = value
        metrics_file = job / "metrics.json"
        if metrics_file.exists():
            row.update(json.loads(metrics_file.read_text()))
            row["status"] = "ok"
        else:
            row["status"] = "missing metrics"
        rows.append(row)
    if swept_only and len(rows) > 1:
        # Keep override columns that differ between jobs (the swept ones) and all metrics.
        override_keys = {k for job in jobs for k in _override_keys(job)}
        constant = {k for k in override_keys if len({str(r.get(k)) for r in rows}) == 1}
        rows = [{k: v for k, v in r.items() if k not in constant} for r in rows]
    return rows


def _override_keys(job: Path) -> list[str]:
    overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
    return [o.partition("=")[0].lstrip("+~") for o in overrides]


def columns(rows: list[dict[str, Any]]) -> list[str]:
    seen: list[str] = []
    for r in rows:
        for k in r:
            if k not in seen:
                seen.append(k)
    metric_cols = [m for m in DEFAULT_METRICS if m in seen]
    others = [k for k in seen if k not in metric_cols and "/" in k]
    params = [k for k in seen if k not in metric_cols and k not in others]
    return params + metric_cols + sorted(others)


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def write_tables(
    rows: list[dict[str, Any]], folder: Path, metrics: list[str] | None = None
) -> tuple[Path, Path]:
    cols = columns(rows)
    if metrics:
        cols = [c for c in cols if "/" not in c or c in metrics]
    csv_path, md_path = folder / "summary.csv", folder / "summary.md"
    write_csv(csv_path, rows, cols)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    atomic_write_text(md_path, "\n".join(lines) + "\n")
    return csv_path, md_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tunelab.summarize",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "folder", type=Path, help="a multirun folder (logs/<task>/multiruns/<date>)"
    )
    parser.add_argument("--metrics", nargs="*", help="metric columns to keep (default: all)")
    parser.add_argument(
        "--all-overrides",
        action="store_true",
        help="keep override columns that are the same in every job",
    )
    args = parser.parse_args(argv)
    try:
        rows = collect(args.folder, swept_only=not args.all_overrides)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    csv_path, md_path = write_tables(rows, args.folder, args.metrics)
    print(md_path.read_text())
    print(f"wrote {csv_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
