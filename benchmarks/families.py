"""SFT tokens/s on the shape of a model users fine-tune today, beside TRL's SFTTrainer.

    python -m benchmarks.families --threads 1                       # Qwen2.5-0.5B shape
    python -m benchmarks.families --shape tiny-llama --repeats 1 --steps 1 --out /tmp/r.json

A Qwen2.5-0.5B-shaped model (random init, seed 123: 24 layers, width 896, GQA 14/2, q/k/v
biases, 151,936-token tied embedding) is written by tunelab's exporter as a Hugging Face folder;
transformers' Qwen2ForCausalLM loads it and must give the same logits before anything is timed.
`tunelab_sft` (SFTTask in Lightning, packed batches, the project's defaults) and `trl_sft`
(SFTTrainer with its defaults: no packing, pad to the batch's longest) train on the same token
ids (the embedded instructions, GPT-2-tokenised: every id is inside Qwen's vocabulary) in the
same order, each segment in a fresh process, order rotated every repeat.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from benchmarks.common import versions
from benchmarks.paired import (
    add_common_args,
    paired_ratio,
    paired_segments,
    prepare,
    run_info,
    save_section,
    sft_spec,
    start,
    target_table,
    update_block,
)

TARGETS = {"sft_qwen_tokens_per_s_ratio_vs_trl": (">=", 1.3)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="qwen2.5-0.5b")
    p.add_argument("--batch-size", type=int, default=2)
    add_common_args(p)
    args, workdir = start(p, argv)
    base = prepare(args.shape, args.seed, args.threads, workdir)
    spec, tokens = sft_spec(args, base, workdir)
    print(f"== sft on {args.shape}", flush=True)
    res = paired_segments(["tunelab_sft", "trl_sft"], spec, workdir, args.repeats, tokens, "tok/s")
    res["ratios"] = {"vs_trl": paired_ratio(res["rates"], "tunelab_sft", "trl_sft")}
    res.update(
        run=run_info(args),
        parameters=base["parameters"],
        weights_check=base["weights_check"],
        versions=versions(),
    )
    key = "sft_qwen_tokens_per_s_ratio_vs_trl"
    headline = {key: round(res["ratios"]["vs_trl"]["median"], 4)} if "qwen" in args.shape else {}
    save_section(args.out, "families", {args.shape: res}, headline)
    if headline and not args.no_readme:
        update_block(args.readme, "families", table(args.shape, res))
    print(json.dumps(headline or res["ratios"], indent=2))
    return res


def table(shape: str, res: dict[str, Any]) -> str:
    import statistics

    st = res["run"]["settings"]
    lines = [f"### SFT on a {shape} shape (random weights), beside TRL", ""]
    lines += target_table({"sft_qwen_tokens_per_s_ratio_vs_trl": res["ratios"]["vs_trl"]}, TARGETS)
    lines += ["", "| contender | tokens/s (median) | peak RSS (MiB) |", "| --- | --- | --- |"]
    for name, vals in res["rates"].items():
        lines.append(
            f"| {name} | {statistics.median(vals):.1f} | {res['peak_rss_mib'][name]:.0f} |"
        )
    lines.append(
        f"\n{res['parameters'] / 1e6:.0f}M parameters; run {res['run']['date']}, load average "
        f"before {res['run']['load_average_before']}, threads {st['threads']}, batch "
        f"{st['batch_size']}, {st['repeats']} repeats of {st['warmup']} warmup + {st['steps']} "
        "timed steps; max |logit difference| to transformers "
        f"{res['weights_check']['transformers']:.1e}. The figure is the median of the "
        "per-repeat ratios (each repeat runs both back to back), not the ratio of the medians "
        "above: on a shared machine the repeats' speeds move together."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
