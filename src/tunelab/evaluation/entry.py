"""What `python -m tunelab.eval mode=choice|harness|reward` runs (eval.py stays a dispatcher)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from tunelab.evaluation.io import write_json_atomic

log = logging.getLogger("tunelab.eval")


def _load(cfg: DictConfig, what: str = "ckpt_path", source: str | None = None):
    from tunelab.models import load_pretrained
    from tunelab.serve import resolve_device

    source = source or cfg.get(what)
    if not source:
        raise ValueError(f"{what}: give a checkpoint, run folder, preset, HF folder or .gguf")
    loaded = load_pretrained(str(source), prompt_style=cfg.get("prompt_style"))
    loaded.model.to(resolve_device(cfg.get("device", "auto")))
    return loaded


def run_choice(cfg: DictConfig, output_dir: Path) -> dict[str, float]:
    from tunelab.evaluation.choice import evaluate_choice
    from tunelab.evaluation.sets import ChoiceSet

    choice_set = hydra.utils.instantiate(cfg.data)
    if not isinstance(choice_set, ChoiceSet):
        raise ValueError(
            "mode=choice needs a multiple-choice set: data=mc_python_semantics, "
            "data=mc_prose_cloze or data=mc_file data.path=<file.jsonl|file.csv>"
        )
    items, dev = choice_set.load()  # bad data fails before the model loads
    if cfg.get("limit"):
        items = items[: int(cfg.limit)]
    loaded = _load(cfg)
    log.info(
        "multiple choice: %d items of %s (%s, %d-shot) with %s",
        len(items),
        choice_set.name,
        choice_set.style,
        choice_set.k_shot,
        loaded.source,
    )
    result = evaluate_choice(
        loaded.model,
        loaded.tokenizer,
        items,
        choice_set.style,
        dev,
        choice_set.k_shot,
        choice_set.fewshot_sampler,
        choice_set.fewshot_seed,
        int(cfg.batch_size),
    )
    summary = {**result.summary, "set": choice_set.name, "path": str(choice_set.path)}
    summary |= {"model": loaded.source, "k_shot": choice_set.k_shot}
    write_json_atomic(
        output_dir / "choice.json",
        {"summary": summary, "metrics": result.metrics, "records": result.rows},
    )
    m = result.metrics
    log.info(
        "%s: acc %.4f, acc_norm %.4f (chance %.4f, %d items)",
        choice_set.name,
        m["acc"],
        m["acc_norm"],
        m["chance"],
        int(m["n"]),
    )
    return {f"choice/{choice_set.name}/{k}": float(v) for k, v in m.items()}


def _preference_pairs(cfg: DictConfig):
    """The pairs to score: data's `pairs_split` (test/val/train/all); the policy's or reward
    model's run data when `data=` is not on the command line (its held-out pairs)."""
    from omegaconf import OmegaConf

    from tunelab.eval import _data_overridden, _run_config

    data_cfg = cfg.data
    if not _data_overridden() and cfg.get("data_from_run", True):
        for key in ("policy", "reward_model"):
            run_cfg = _run_config(str(cfg[key])) if cfg.get(key) else None
            if run_cfg is not None and OmegaConf.load(run_cfg).get("data") is not None:
                data_cfg = OmegaConf.load(run_cfg).data
                log.info("pairs: the data of %s's run (%s)", key, run_cfg)
                break
    dm = hydra.utils.instantiate(data_cfg)
    if not hasattr(dm, "load_splits"):
        raise ValueError(
            "mode=reward needs preference pairs: data=embedded_preferences or "
            "data=preferences_file data.path=..."
        )
    splits = dm.load_splits()
    split = cfg.get("pairs_split", "test")
    if split == "all":
        pairs = [p for s in ("train", "val", "test") for p in splits.get(s, [])]
    elif split in splits:
        pairs = splits[split]
    else:
        raise ValueError(f"pairs_split: expected train, val, test or all, got {split!r}")
    if cfg.get("limit"):
        pairs = pairs[: int(cfg.limit)]
    if not pairs:
        raise ValueError(f"mode=reward: the {split} split of the preference data is empty")
    return dm, pairs


def _policy_beta_and_reference(cfg: DictConfig) -> tuple[float, str]:
    from omegaconf import OmegaConf

    from tunelab.eval import _run_config

    run_cfg = _run_config(str(cfg.policy))
    saved = OmegaConf.load(run_cfg) if run_cfg is not None else None
    beta = cfg.get("beta")
    if beta is None:
        beta = saved.task.get("beta") if saved is not None and "task" in saved else None
    reference = cfg.get("reference")
    if reference is None and saved is not None and "model" in saved:
        reference = saved.model.get("source")
    if beta is None or reference is None:
        raise ValueError(
            "mode=reward with policy=...: give beta=... and reference=... (the DPO run's "
            "config.yaml was not found beside the checkpoint)"
        )
    return float(beta), str(reference)


def run_reward(cfg: DictConfig, output_dir: Path) -> dict[str, float]:
    from tunelab.evaluation import reward as rw
    from tunelab.judge.evaluate import build_judge

    if not (cfg.get("reward_model") or cfg.get("policy") or cfg.get("judge")):
        raise ValueError("mode=reward: give reward_model=..., policy=... and/or a judge=...")
    judge = build_judge(cfg.get("judge"))
    dm, pairs = _preference_pairs(cfg)
    max_length = int(getattr(dm, "max_length", None) or 512)
    max_prompt = int(getattr(dm, "max_prompt_length", None) or max_length // 2)
    cats = rw.categories(pairs, cfg.get("category_key"))
    correct: dict[str, list[float | None]] = {}
    describe: dict[str, object] = {}
    bs = int(cfg.batch_size)
    if cfg.get("reward_model"):
        from tunelab.serve import resolve_device
        from tunelab.tasks.reward import load_reward_model

        rm, tok, style = load_reward_model(str(cfg.reward_model))
        rm.to(resolve_device(cfg.get("device", "auto")))
        correct["reward_model"] = rw.reward_model_correct(
            rm, tok, cfg.get("prompt_style") or style, pairs, max_length, max_prompt, bs
        )
        describe["reward_model"] = str(cfg.reward_model)
    if cfg.get("policy"):
        beta, reference = _policy_beta_and_reference(cfg)
        policy = _load(cfg, "policy")
        ref = _load(cfg, "reference", reference)
        correct["dpo_implicit"] = rw.implicit_reward_correct(
            policy.model,
            ref.model,
            policy.tokenizer,
            policy.prompt_style,
            pairs,
            beta,
            max_length,
            max_prompt,
            bs,
        )
        describe["dpo_implicit"] = {"policy": str(cfg.policy), "reference": reference, "beta": beta}
    judge_summary = None
    if judge is not None:
        try:
            correct["judge_pairwise"], judge_summary = rw.judge_correct(judge, pairs)
        finally:
            judge.backend.close()
        describe["judge_pairwise"] = judge.backend.describe()
    rows, metrics = rw.accuracy_table(cats, correct)
    table = rw.format_table(rows, list(correct))
    for line in table.splitlines():
        log.info("%s", line)
    write_json_atomic(
        output_dir / "reward_eval.json",
        {
            "summary": {
                "pairs": len(pairs),
                "split": cfg.get("pairs_split", "test"),
                "categories": rw.by_category(cats),
                "scorers": describe,
                "judge": judge_summary,
            },
            "table": rows,
            "per_pair": [
                {"category": c, **{m: v[i] for m, v in correct.items()}} for i, c in enumerate(cats)
            ],
        },
    )
    metrics["reward/pairs"] = float(len(pairs))
    return metrics


def run_harness_mode(cfg: DictConfig, output_dir: Path) -> dict[str, float]:
    try:
        from tunelab.evaluation.harness import run_harness
    except ImportError as e:
        raise ValueError(
            f"mode=harness needs lm-evaluation-harness: pip install 'tunelab[harness]' ({e})"
        ) from None
    tasks = cfg.get("tasks")
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    if not tasks:
        raise ValueError("mode=harness: give tasks=[hellaswag,mmlu] (lm_eval task names)")
    loaded = _load(cfg)
    results = run_harness(
        loaded,
        list(tasks),
        cfg.get("harness_include"),
        cfg.get("num_fewshot"),
        cfg.get("limit"),
        int(cfg.batch_size),
    )
    per_task = results.get("results", {})
    write_json_atomic(
        output_dir / "harness.json",
        json.loads(json.dumps({"results": per_task, "model": loaded.source}, default=str)),
    )
    metrics = {}
    for task, values in per_task.items():
        for key, value in values.items():
            name, _, filt = key.partition(",")
            if isinstance(value, int | float) and not isinstance(value, bool) and filt:
                metrics[f"harness/{task}/{name}"] = float(value)
                log.info("harness %s %s: %.4f", task, name, value)
    return metrics
