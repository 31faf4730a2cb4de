"""The study's figures (matplotlib, Agg): error bars are the 95% t-intervals of report.summarise.

- forgetting.png: forgetting and adaptation vs replay ratio, loss (left) and MC accuracy
  (right), one line pair per setting of full fine-tuning;
- lora_vs_full.png: the same for LoRA beside full fine-tuning at the same peak LR (when both ran);
- curves.png: held-out old- and new-domain loss over the steps of one seed per ratio.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(sub: list[dict[str, Any]], key: str, scale: float) -> tuple[list, list, list]:
    xs, ys, es = [], [], []
    for s in sub:
        iv = s[key]
        if iv is None:
            continue
        xs.append(s["replay_ratio"])
        ys.append(scale * iv.mean)
        es.append(0.0 if iv.half is None else scale * iv.half)
    return xs, ys, es


def _axes_replay(ax: Any, xs_all: list[float], ylabel: str) -> None:
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlim(-0.002, max(xs_all) * 1.15 if xs_all else 1.0)
    ax.set_xticks(xs_all)
    ax.set_xticklabels([f"{x:g}" for x in xs_all])
    ax.set_xlabel("replay ratio r")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)


def _panel_pair(axes: Any, summary: list[dict[str, Any]], settings: list[str]) -> None:
    xs_all = sorted({s["replay_ratio"] for s in summary if s["setting"] in settings})
    for i, setting in enumerate(settings):
        sub = [s for s in summary if s["setting"] == setting]
        n = max(s["n"] for s in sub)
        for ax, keys, scale in (
            (axes[0], ("forgetting", "adaptation"), 1.0),
            (axes[1], ("mc_forgetting", "mc_adaptation"), 100.0),
        ):
            for key, marker, ls in ((keys[0], "o", "-"), (keys[1], "s", "--")):
                xs, ys, es = _series(sub, key, scale)
                if xs:
                    ax.errorbar(
                        xs,
                        ys,
                        yerr=es,
                        fmt=marker + ls,
                        color=f"C{i}",
                        capsize=3,
                        label=f"{key.replace('mc_', 'MC ')} ({setting}, {n} seeds)",
                    )
    _axes_replay(axes[0], xs_all, "loss change (nats/token)")
    axes[0].set_title(
        "forgetting = old loss - old loss@0; adaptation = new loss@0 - new loss", fontsize=8
    )
    _axes_replay(axes[1], xs_all, "accuracy change (points)")
    axes[1].set_title("MC: old-set acc drop; new-set acc gain", fontsize=8)


# Ibrahim et al. 2024, Table 2: forgetting reduced by 53% / 71% / 88% at 1% / 5% / 25% replay.
IBRAHIM = {0.01: 0.53, 0.05: 0.71, 0.25: 0.88}


def _panel_reduction(ax: Any, summary: list[dict[str, Any]], settings: list[str]) -> None:
    """1 - F(r) / F(0) of the loss forgetting, paired by seed (95% t-intervals), beside
    Ibrahim et al.'s."""
    xs_all = sorted({s["replay_ratio"] for s in summary if s["setting"] in settings})
    for i, setting in enumerate(settings):
        sub = [s for s in summary if s["setting"] == setting]
        xs, ys, es = _series(sub, "reduction_paired", 100.0)
        if xs:
            ax.errorbar(
                xs, ys, yerr=es, fmt="o-", color=f"C{i}", capsize=3, label=f"here ({setting})"
            )
    ax.plot(
        list(IBRAHIM),
        [100 * v for v in IBRAHIM.values()],
        "kx",
        ms=9,
        label="Ibrahim et al. Table 2",
    )
    _axes_replay(ax, sorted({*xs_all, *IBRAHIM}), "forgetting reduction vs r = 0 (%)")
    ax.set_title("1 - forgetting(r) / forgetting(0), loss, paired by seed", fontsize=8)


def plot_replay(summary: list[dict[str, Any]], out: Path) -> list[Path]:
    plt = _plt()
    written = []
    full = sorted({s["setting"] for s in summary if s["method"] == "full"})
    if full:
        fig, axes = plt.subplots(1, 3, figsize=(17, 4.4))
        _panel_pair(axes, summary, full)
        _panel_reduction(axes[2], summary, full)
        fig.suptitle("forgetting and adaptation vs replay ratio (95% t-intervals)", fontsize=10)
        fig.tight_layout()
        fig.savefig(out / "forgetting.png", dpi=110)
        plt.close(fig)
        written.append(out / "forgetting.png")
    lora = sorted({s["setting"] for s in summary if s["method"] == "lora"})
    if lora:
        lrs = {s["peak_lr"] for s in summary if s["method"] == "lora"}
        pair = lora + [s for s in full if any(f"lr={lr:g}" in s for lr in lrs)]
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
        _panel_pair(axes, summary, pair)
        fig.suptitle("LoRA vs full fine-tuning (95% t-intervals)", fontsize=10)
        fig.tight_layout()
        fig.savefig(out / "lora_vs_full.png", dpi=110)
        plt.close(fig)
        written.append(out / "lora_vs_full.png")
    return written


def read_curve(job: Path) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of val/old_loss and val/new_loss at every validation (csv/metrics.csv)."""
    path = job / "csv" / "metrics.csv"
    curves: dict[str, list[tuple[int, float]]] = {"val/old_loss": [], "val/new_loss": []}
    if not path.exists():
        return curves
    with open(path) as f:
        for row in csv.DictReader(f):
            for k, pts in curves.items():
                if row.get(k):
                    pts.append((int(row["step"]), float(row[k])))
    # Validations after step s are logged at s - 1 (Lightning's step of the last batch).
    for k, pts in curves.items():
        curves[k] = [(s + 1 if i else s, v) for i, (s, v) in enumerate(pts)]
    return curves


def plot_curves(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """Curves of the first seed of each ratio, in the setting that forgets most at r = 0."""
    zero = [r for r in rows if r["replay_ratio"] == 0.0] or rows
    setting = max(zero, key=lambda r: r["forgetting"])["setting"]
    first_seed = min(str(r["seed"]) for r in rows if r["setting"] == setting)
    sub = [r for r in rows if r["setting"] == setting and str(r["seed"]) == first_seed]
    plt = _plt()
    cmap = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(6.5, 4.4))
    for i, r in enumerate(sorted(sub, key=lambda r: r["replay_ratio"])):
        curves = read_curve(Path(r["job_path"]))
        color = cmap(i / max(1, len(sub) - 1))
        for key, style in (("val/old_loss", "-"), ("val/new_loss", ":")):
            if curves[key]:
                ax.plot(*zip(*curves[key], strict=True), style, marker=".", color=color)
        ax.plot([], [], "-", color=color, label=f"r = {r['replay_ratio']:g}")
    ax.plot([], [], "-", color="k", label="old domain")
    ax.plot([], [], ":", color="k", label="new domain")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("held-out loss (nats/token)")
    ax.set_title(
        f"held-out loss during continued pretraining ({setting}, seed {first_seed})", fontsize=8
    )
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)
    return [out / "curves.png"]
