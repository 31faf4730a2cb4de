"""DPO pairs/s and peak RSS: tunelab's DPOTask (reference log-probs precomputed) vs TRL's
DPOTrainer (its default: a reference model run beside the policy on every step).

Both train the same GPT-2 weights on the same token ids (tunelab's tokenisation of the embedded
preference pairs, passed to TRL already tokenised), batch `--dpo-batch-size` pairs, the same
batches in the same order. tunelab computes the reference log-probs once, before training (that
one-off forward is timed and reported as `precompute_s`, and folded into an amortised rate).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from benchmarks.common import bench_tokenizer, build_hf_model, hf_tokenizer, ratio_stats, write_json
from benchmarks.contenders import (
    Contender,
    _common_hf_args,
    _hf_callback,
    _PausableRun,
    _sequential,
    tunelab_optimizer_factory,
)


def dpo_batches(batch_size: int, max_length: int, seed: int, tokenizer: Any = None):
    """Preference pairs (tunelab's token ids) in the first-epoch order of tunelab's loader."""
    from tunelab.data.preference import PreferenceDataModule
    from tunelab.models.tokenizer import gpt2_tokenizer

    dm = PreferenceDataModule(batch_size=batch_size, max_length=max_length, seed=seed)
    dm.connect(tokenizer or gpt2_tokenizer(), "alpaca")
    dm.setup()
    examples = dm.datasets["train"].examples
    return [[examples[i] for i in idx] for idx in dm.train_dataloader().batch_sampler]


class DPOContender(Contender):
    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        data = json.loads(Path(spec["batches"]).read_text())
        self.batches: list[list[dict[str, list[int]]]] = data["batches"]
        self.warmup = spec["warmup"]
        self.per_segment = spec["warmup"] + spec["steps"]
        self.first = spec.get("first_segment", 0)
        self.n_segments = spec["segments"]

    def own_pairs(self) -> list[dict[str, list[int]]]:
        start = self.first * self.per_segment
        return [
            p for b in self.batches[start : start + self.n_segments * self.per_segment] for p in b
        ]

    def timed(self, ends: list[float]) -> float:
        return ends[-1] - ends[self.warmup - 1]


class TunelabDPO(DPOContender):
    """DPOTask(reference="precomputed") in a Lightning Trainer; packed rows when `packing`."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        from benchmarks.contenders import apply_malloc_policy
        from tunelab.data.preference import PairExample, PreferenceDataModule, PreferenceDataset

        # tunelab_dpo_lowmem: task.activation_checkpointing=true and
        # callbacks.cpu_allocator.policy=release, tunelab's settings for the lowest peak memory
        self.lowmem = spec.get("contender", "").endswith("_lowmem")
        default_policy = "release" if self.lowmem else "keep"
        self.malloc_policy = apply_malloc_policy({"malloc": spec.get("malloc", default_policy)})
        from tunelab.data.records import Record
        from tunelab.tasks.dpo import DPOTask

        tok = bench_tokenizer(self.cfg)
        pairs = self.own_pairs()
        self.examples = [
            PairExample(p["prompt"], p["chosen"], p["rejected"], i, Record(""))
            for i, p in enumerate(pairs)
        ]
        packing, max_length = spec["packing"], spec["max_length"]

        class Segment(PreferenceDataModule):
            """The given examples in the given order (no shuffling, no val split)."""

            def __init__(self, examples: list[PairExample]) -> None:
                super().__init__(batch_size=spec["batch_size"], max_length=max_length)
                self.packing = packing
                self.connect(tok, "alpaca")
                self.datasets = {"train": PreferenceDataset(examples)}

            def train_dataloader(self) -> DataLoader:
                return self._loader("train", shuffle=False)

        self.Segment = Segment
        self.task = DPOTask(
            model=self.tunelab_model(),
            tokenizer=tok,
            prompt_style="alpaca",
            optimizer=tunelab_optimizer_factory(),
            beta=0.1,
            loss_type="sigmoid",
            # tunelab_dpo_lora: the reference is the same model with its adapters switched off
            reference="adapters_off" if self.lora else "precomputed",
            activation_checkpointing=self.lowmem,
        )
        # the one-off reference pass over every pair this run will train on
        t = time.perf_counter()
        if not self.lora:
            self.task.precompute_reference(Segment(self.examples), splits=("train",))
        self.precompute_s = time.perf_counter() - t
        self.n_pairs = len(self.examples)

    def segment(self, index: int, **_: Any) -> dict[str, Any]:
        from benchmarks.contenders import fit_timed

        start = (index - self.first) * self.per_segment * self.spec["batch_size"]
        examples = self.examples[start : start + self.per_segment * self.spec["batch_size"]]
        ends = fit_timed(
            self.task, self.per_segment, self.malloc_policy, datamodule=self.Segment(examples)
        )
        return {
            "seconds": self.timed(ends),
            "precompute_s": self.precompute_s,
            "precomputed_pairs": self.n_pairs,
        }


class TrlDPO(DPOContender):
    """TRL's DPOTrainer with its defaults (sigmoid loss, beta 0.1, reference model beside the
    policy); as `trl_dpo_precomputed`, with TRL's own `precompute_ref_log_probs` (at set-up)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        from datasets import Dataset
        from trl import DPOConfig, DPOTrainer

        n_segments = self.n_segments
        pairs = self.own_pairs()
        data = Dataset.from_dict(
            {
                "prompt_ids": [p["prompt"] for p in pairs],
                "chosen_ids": [p["chosen"] for p in pairs],
                "rejected_ids": [p["rejected"] for p in pairs],
            }
        )

        class PreTokenized(_sequential(DPOTrainer)):
            """tunelab's token ids as they are (TRL would re-tokenise the text itself)."""

            def _prepare_dataset(self, dataset, *args: Any, **kwargs: Any):
                return dataset

        self.run = _PausableRun(self.per_segment)
        self.tmp = tempfile.mkdtemp(prefix="trl_dpo_")
        # trl_dpo: TRL's default; trl_dpo_precomputed: TRL's own `precompute_ref_log_probs`;
        # trl_dpo_lowmem: that and gradient checkpointing (the like of tunelab_dpo_lowmem)
        name = spec.get("contender", "")
        precompute = name.endswith(("_precomputed", "_lowmem"))
        args = DPOConfig(
            **_common_hf_args(spec, self.tmp, n_segments * self.per_segment),
            beta=0.1,
            loss_type=["sigmoid"],
            max_length=spec["max_length"] + 1,  # no truncation: tunelab already cut the pairs
            precompute_ref_log_probs=precompute,
            gradient_checkpointing=name.endswith("_lowmem"),
        )
        t = time.perf_counter()
        self.trainer = PreTokenized(
            model=build_hf_model(Path(spec["hf_dir"])),
            args=args,
            train_dataset=data,
            processing_class=hf_tokenizer(spec["hf_dir"]),
            peft_config=self.peft_config(),  # trl_dpo_lora: reference = adapters disabled
            callbacks=[_hf_callback(self.run)],
        )
        self.setup_s = time.perf_counter() - t
        self.next_index = self.first

    def segment(self, index: int, **_: Any) -> dict[str, Any]:
        if index != self.next_index:
            raise ValueError(f"TRL segments run in order: expected {self.next_index}, got {index}")
        self.next_index += 1
        ends = self.run.next_segment(self.trainer.train)
        return {"seconds": self.timed(ends), "setup_s": self.setup_s}


def run(args, base: dict[str, Any], workdir: Path, one_shot, rotated) -> dict[str, Any]:
    """Pairs/s per paired repeat, peak RSS per contender, and the ratios."""
    import importlib.util

    batches = dpo_batches(args.dpo_batch_size, args.max_length, args.seed)
    per_segment = args.warmup + args.steps
    need = per_segment * args.repeats
    if len(batches) < need:
        raise ValueError(f"dpo: {need} batches needed, the data has {len(batches)}")
    path = workdir / "dpo_batches.json"
    write_json(
        path,
        {
            "batches": [
                [{"prompt": e.prompt, "chosen": e.chosen, "rejected": e.rejected} for e in b]
                for b in batches[:need]
            ]
        },
    )
    spec = {
        **base,
        "batches": str(path),
        "warmup": args.warmup,
        "steps": args.steps,
        "segments": args.repeats,
        "batch_size": args.dpo_batch_size,
        "max_length": args.max_length,
        "packing": True,
    }
    names = ["tunelab_dpo", "tunelab_dpo_lowmem"]
    if all(importlib.util.find_spec(m) for m in ("trl", "transformers", "datasets")):
        names += ["trl_dpo", "trl_dpo_precomputed", "trl_dpo_lowmem"]
    seconds: dict[str, list[float]] = {n: [] for n in names}
    rss: dict[str, list[float]] = {n: [] for n in names}
    extra: dict[str, Any] = {}
    pairs_per_segment = args.steps * args.dpo_batch_size
    for r in range(args.repeats):
        for name in rotated(names, r):
            (out,), peak = one_shot(name, spec, workdir, r, [{}])
            rss[name].append(peak)
            seconds[name].append(out["seconds"])
            extra.setdefault(name, []).append(
                {k: v for k, v in out.items() if k.endswith(("_s", "_pairs"))}
            )
            rate = pairs_per_segment / out["seconds"]
            print(f"  dpo repeat {r} {name}: {rate:.2f} pairs/s, {peak:.0f} MiB", flush=True)
    rates = {k: [pairs_per_segment / s for s in v] for k, v in seconds.items()}
    res: dict[str, Any] = {
        "pairs_per_segment": pairs_per_segment,
        "pairs_per_s": rates,
        "seconds": seconds,
        "peak_rss_mib": {n: max(v) for n, v in rss.items()},
        "peak_rss_mib_per_repeat": rss,
        "extra": extra,
        "ratios": {},
    }

    def paired(a: dict[str, list[float]], x: str, y: str) -> dict[str, float]:
        return ratio_stats([p / q for p, q in zip(a[x], a[y], strict=True)])

    if "trl_dpo" in rates:
        for mine, tag in (("tunelab_dpo", ""), ("tunelab_dpo_lowmem", "lowmem_")):
            res["ratios"][f"{tag}vs_trl"] = paired(rates, mine, "trl_dpo")
            res["ratios"][f"{tag}peak_rss_vs_trl"] = paired(rss, mine, "trl_dpo")
        # the one-off reference pass (per pair) added to each step's time per pair: the rate
        # over one epoch, when every pair is trained on once
        amortised = [
            1 / (s / pairs_per_segment + e["precompute_s"] / e["precomputed_pairs"])
            for s, e in zip(seconds["tunelab_dpo"], extra["tunelab_dpo"], strict=True)
        ]
        res["ratios"]["vs_trl_amortised_precompute"] = ratio_stats(
            [a / b for a, b in zip(amortised, rates["trl_dpo"], strict=True)]
        )
    if "trl_dpo_precomputed" in rates:  # like for like: both without a reference forward
        res["ratios"]["vs_trl_precomputed"] = paired(rates, "tunelab_dpo", "trl_dpo_precomputed")
        res["ratios"]["peak_rss_vs_trl_precomputed"] = paired(
            rss, "tunelab_dpo", "trl_dpo_precomputed"
        )
    if "trl_dpo_lowmem" in rates:  # like for like: both precomputed, both recomputing blocks
        res["ratios"]["lowmem_vs_trl_lowmem"] = paired(
            rates, "tunelab_dpo_lowmem", "trl_dpo_lowmem"
        )
        res["ratios"]["lowmem_peak_rss_vs_trl_lowmem"] = paired(
            rss, "tunelab_dpo_lowmem", "trl_dpo_lowmem"
        )
    return res
