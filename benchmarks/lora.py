"""LoRA benchmarks: tunelab LoRA against tunelab full fine-tuning and against TRL + PEFT.

    python -m benchmarks.lora --threads 1 --preset smollm2-135m
    python -m benchmarks.lora --threads 1 --preset gpt2-355m
    python -m benchmarks.lora --preset tiny-llama --repeats 1 --steps 1 --out /tmp/r.json --no-readme

For one model shape (random init, seed 123; the same weights for every contender, checked
against transformers first), rank 16 / alpha 32 adapters on every linear layer of the blocks:
- SFT: `tunelab_sft` (full fine-tuning, the project's defaults), `tunelab_sft_lora` (the same
  with `model.lora`), `tunelab_sft_lora_recompute` (that with `task.activation_checkpointing`),
  and TRL's `SFTTrainer` at its defaults given a PEFT `LoraConfig(r=16, lora_alpha=32,
  target_modules="all-linear")` (`trl_sft_lora`): tokens/s and peak RSS. TRL's defaults recompute
  activations in the backward (`gradient_checkpointing=True`), so the vs-TRL headlines pair it
  with `tunelab_sft_lora_recompute` (the same work); defaults against defaults is reported too;
- DPO: `tunelab_dpo_lora` (`task.reference=adapters_off`) and TRL's `DPOTrainer` with the same
  PEFT config (its reference is also the adapter-disabled model): pairs/s and peak RSS.
The headline keys take, over the shapes measured, the least favourable median.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.common import versions, write_json
from benchmarks.paired import (
    add_common_args,
    paired_ratio,
    paired_segments,
    plain,
    prepare,
    run_info,
    save_section,
    sft_spec,
    start,
    target_table,
    update_block,
)

LORA = {"rank": 16, "alpha": 32.0, "dropout": 0.0, "targets": ["all-linear"]}
TARGETS = {
    "lora_peak_rss_ratio_vs_full": ("<=", 0.5),
    "lora_tokens_per_s_ratio_vs_full": (">=", 1.0),
    "lora_sft_tokens_per_s_ratio_vs_trl_peft": (">=", 1.3),
    "lora_sft_peak_rss_ratio_vs_trl_peft": ("<=", 0.8),
    "lora_dpo_pairs_per_s_ratio_vs_trl_peft": (">=", 1.3),
}
# figure key -> (section, ratio name inside it)
SOURCES = {
    "lora_peak_rss_ratio_vs_full": ("sft", "peak_rss_lora_vs_full"),
    "lora_tokens_per_s_ratio_vs_full": ("sft", "lora_vs_full"),
    "lora_sft_tokens_per_s_ratio_vs_trl_peft": ("sft", "recompute_lora_vs_trl_peft"),
    "lora_sft_peak_rss_ratio_vs_trl_peft": ("sft", "peak_rss_recompute_lora_vs_trl_peft"),
    "lora_dpo_pairs_per_s_ratio_vs_trl_peft": ("dpo", "lora_vs_trl_peft"),
}


def run_sft(args, base: dict[str, Any], workdir: Path) -> dict[str, Any]:
    spec, tokens = sft_spec(args, base, workdir, lora=LORA)
    lora, recompute, trl = "tunelab_sft_lora", "tunelab_sft_lora_recompute", "trl_sft_lora"
    names = ["tunelab_sft", lora, recompute, trl]
    res = paired_segments(names, spec, workdir, args.repeats, tokens, "tokens/s")
    rates, rss = res["rates"], res["peak_rss_mib_per_repeat"]
    res["ratios"] = {
        "lora_vs_full": paired_ratio(rates, lora, "tunelab_sft"),
        "peak_rss_lora_vs_full": paired_ratio(rss, lora, "tunelab_sft"),
        # like for like: both recompute activations (TRL's default)
        "recompute_lora_vs_trl_peft": paired_ratio(rates, recompute, trl),
        "peak_rss_recompute_lora_vs_trl_peft": paired_ratio(rss, recompute, trl),
        # each at its defaults: tunelab keeps activations, TRL recomputes them
        "lora_vs_trl_peft": paired_ratio(rates, lora, trl),
        "peak_rss_lora_vs_trl_peft": paired_ratio(rss, lora, trl),
    }
    return res


def run_dpo(args, base: dict[str, Any], workdir: Path) -> dict[str, Any]:
    from benchmarks.dpo import dpo_batches

    batches = dpo_batches(args.dpo_batch_size, args.max_length, args.seed, base["tokenizer"])
    per = args.warmup + args.steps
    need = per * args.repeats
    if len(batches) < need:
        raise ValueError(f"dpo: {need} batches needed, the data has {len(batches)}")
    path = workdir / "dpo_batches.json"
    pairs = [
        [{"prompt": e.prompt, "chosen": e.chosen, "rejected": e.rejected} for e in b]
        for b in batches[:need]
    ]
    write_json(path, {"batches": pairs})
    spec = {
        **plain(base),
        "batches": str(path),
        "warmup": args.warmup,
        "steps": args.steps,
        "segments": args.repeats,
        "batch_size": args.dpo_batch_size,
        "max_length": args.max_length,
        "packing": True,
        "lora": LORA,
    }
    names = ["tunelab_dpo_lora", "trl_dpo_lora"]
    res = paired_segments(
        names, spec, workdir, args.repeats, lambda r: args.steps * args.dpo_batch_size, "pairs/s"
    )
    rates, rss = res["rates"], res["peak_rss_mib_per_repeat"]
    res["ratios"] = {
        "lora_vs_trl_peft": paired_ratio(rates, "tunelab_dpo_lora", "trl_dpo_lora"),
        "peak_rss_lora_vs_trl_peft": paired_ratio(rss, "tunelab_dpo_lora", "trl_dpo_lora"),
    }
    return res


def headline(section: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per key, the least favourable median over the shapes measured (and its stats)."""
    values, stats = {}, {}
    for key, (fig, ratio) in SOURCES.items():
        found = [
            (shape, res[fig]["ratios"][ratio])
            for shape, res in section.items()
            if isinstance(res, dict) and ratio in res.get(fig, {}).get("ratios", {})
        ]
        if not found:
            continue
        worse = max if TARGETS[key][0] == "<=" else min
        shape, st = worse(found, key=lambda f: f[1]["median"])
        values[key] = round(st["median"], 4)
        stats[key] = {**st, "shape": shape}
    return values, stats


def table(section: dict[str, Any], stats: dict[str, Any]) -> str:
    lines = ["### LoRA (rank 16, all linear layers of the blocks)", ""]
    lines += target_table(stats, TARGETS)
    lines += [
        "",
        "Each headline is the least favourable median over the shapes below.",
        "",
        "| shape | figure | median | min | max | n |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for shape, res in section.items():
        if not isinstance(res, dict) or "run" not in res:
            continue
        for fig in ("sft", "dpo"):
            for name, st in res.get(fig, {}).get("ratios", {}).items():
                lines.append(
                    f"| {shape} | {fig} `{name}` | {st['median']:.2f} | {st['min']:.2f} "
                    f"| {st['max']:.2f} | {st['n']} |"
                )
    lines += [
        "",
        "| shape | contender | rate (median) | peak RSS (MiB) |",
        "| --- | --- | --- | --- |",
    ]
    import statistics

    for shape, res in section.items():
        if not isinstance(res, dict) or "run" not in res:
            continue
        for fig in ("sft", "dpo"):
            part = res.get(fig)
            if not part:
                continue
            for name, vals in part["rates"].items():
                lines.append(
                    f"| {shape} | {name} | {statistics.median(vals):.2f} {part['unit']} "
                    f"| {part['peak_rss_mib'][name]:.0f} |"
                )
    for shape, res in section.items():
        if not (isinstance(res, dict) and "run" in res):
            continue
        for fig, batch in (("sft", "batch_size"), ("dpo", "dpo_batch_size")):
            if fig not in res:
                continue
            run = res[fig].get("run", res["run"])
            st = run["settings"]
            unit = "pairs" if fig == "dpo" else "examples"
            lines.append(
                f"\n{shape} {fig}: {res['parameters'] / 1e6:.0f}M parameters, run {run['date']}, "
                f"load average before {run['load_average_before']}, threads {st['threads']}, "
                f"batch {st[batch]} {unit}, {st['repeats']} repeats of {st['warmup']} warmup + "
                f"{st['steps']} timed steps."
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="smollm2-135m")
    p.add_argument("--figures", default="sft,dpo")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--dpo-batch-size", type=int, default=2)
    add_common_args(p)
    args, workdir = start(p, argv)
    base = prepare(args.preset, args.seed, args.threads, workdir)
    out: dict[str, Any] = {
        "run": run_info(args),
        "parameters": base["parameters"],
        "weights_check": base["weights_check"],
        "versions": versions(),
    }
    figures = [f for f in args.figures.split(",") if f]
    for fig in figures:
        if fig not in ("sft", "dpo"):
            p.error(f"unknown figure {fig!r}; choose from sft, dpo")
        print(f"== lora {fig} on {args.preset}", flush=True)
        info = run_info(args)  # figures of one shape can come from different runs
        out[fig] = (run_sft if fig == "sft" else run_dpo)(args, base, workdir)
        out[fig]["run"] = info
    results = json.loads(args.out.read_text(encoding="utf-8")) if args.out.exists() else {}
    section = {**results.get("lora", {})}
    earlier = section.get(args.preset, {})
    for fig in ("sft", "dpo"):  # a figure kept from an earlier run keeps that run's details
        if fig in earlier and fig not in out and "run" not in earlier[fig] and "run" in earlier:
            earlier[fig]["run"] = earlier["run"]
    section[args.preset] = {**earlier, **out}
    values, stats = headline(section)
    section["stats"] = stats
    save_section(args.out, "lora", section, values)
    if not args.no_readme:
        update_block(args.readme, "lora", table(section, stats))
    print(json.dumps(values, indent=2))
    return out


if __name__ == "__main__":
    main()
