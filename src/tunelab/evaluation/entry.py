"""What `python -m tunelab.eval mode=choice|harness|reward` runs (eval.py stays a dispatcher)."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from tunelab.evaluation.io import write_json_atomic

log = logging.getLogger("tunelab.eval")


def _load(cfg: DictConfig, what: str = "ckpt_path"):
    from tunelab.models import load_pretrained
    from tunelab.serve import resolve_device

    source = cfg.get(what)
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
