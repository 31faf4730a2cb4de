"""Evaluation entry point: `python -m tunelab.eval ckpt_path=... [judge=ollama|openai|local|none]`.

mode=single (default): answer the test split with a checkpoint (or take an existing
  `responses=.../responses.json`), judge the answers and compute reference metrics; writes
  responses.json, judge.json and metrics.json to this run's folder (logs/eval/runs/<date>/).
  The test split comes from the checkpoint's own run (its config.yaml: same data, same seed)
  unless `data=...` is given on the command line or `data_from_run=false`.
mode=pairwise: `responses_a=... responses_b=...` (e.g. base vs fine-tuned) judged in both
  position orders; writes pairwise.json and metrics.json (wins/ties/losses for run a).
mode=choice: multiple choice by log-likelihood on `data=mc_*` (choice.json); mode=reward:
  RewardBench-style accuracy of `reward_model=`, `policy=` (DPO implicit reward) and the judge
  on preference pairs (reward_eval.json); mode=harness: lm-evaluation-harness `tasks=[...]`
  with the checkpoint as an lm_eval model (harness.json); see tunelab.evaluation.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf, open_dict

from tunelab.train import _finish_wandb
from tunelab.utils.config import conf_dir, instantiate_dict, save_and_print_config

log = logging.getLogger("tunelab.eval")


def _run_config(ckpt_path: str) -> Path | None:
    """config.yaml of the run a checkpoint came from (run folder, checkpoints/, or a .ckpt)."""
    path = Path(ckpt_path)
    for folder in (path, path.parent, path.parent.parent) if path.exists() else ():
        if (folder / "config.yaml").is_file() and (folder / "checkpoints").is_dir():
            return folder / "config.yaml"
    return None


def _data_overridden() -> bool:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return False
    overrides = HydraConfig.get().overrides.task
    return any(o.lstrip("+~").split("=")[0].split(".")[0] == "data" for o in overrides)


def _test_records(cfg: DictConfig):
    data_cfg = cfg.data
    run_cfg = _run_config(str(cfg.ckpt_path)) if cfg.get("data_from_run", True) else None
    if run_cfg is not None and not _data_overridden():
        saved = OmegaConf.load(run_cfg)
        if saved.get("data") is not None:
            data_cfg = saved.data
            log.info("data: the test split of the checkpoint's run (%s)", run_cfg)
    datamodule = hydra.utils.instantiate(data_cfg)
    if not hasattr(datamodule, "test_records"):
        raise ValueError(
            f"data: {data_cfg.get('_target_')} has no test split of instruction records; "
            "pass data=... (instruction data) or responses=path/to/responses.json"
        )
    records = datamodule.test_records()
    if cfg.get("limit"):
        records = records[: cfg.limit]
    if not records:
        raise ValueError("data: the test split is empty; nothing to evaluate")
    return records


def _answer(cfg: DictConfig, output_dir: Path):
    from tunelab.callbacks.responses import answer_records, write_responses
    from tunelab.models import load_pretrained
    from tunelab.serve import resolve_device

    if not cfg.get("ckpt_path"):
        raise ValueError(
            "ckpt_path: give a checkpoint (or preset) to answer with, or responses=... to judge "
            "existing answers"
        )
    records = _test_records(cfg)
    loaded = load_pretrained(str(cfg.ckpt_path), prompt_style=cfg.get("prompt_style"))
    loaded.model.to(resolve_device(cfg.get("device", "auto")))
    log.info("answering %d test records with %s", len(records), loaded.source)
    answers = answer_records(
        loaded.model,
        loaded.tokenizer,
        loaded.prompt_style,
        records,
        cfg.max_new_tokens,
        cfg.batch_size,
    )
    write_responses(output_dir / "responses.json", records, answers)
    return records, answers


def evaluate_single(cfg: DictConfig, output_dir: Path) -> dict[str, float]:
    from tunelab.judge.evaluate import (
        build_judge,
        evaluate_responses,
        format_summary,
        log_to_loggers,
        read_responses,
        write_judge_json,
    )

    judge = build_judge(cfg.get("judge"))  # first: a bad judge config fails before any work
    if cfg.get("responses"):
        records, answers, _ = read_responses(cfg.responses, cfg.response_key)
        if cfg.get("limit"):
            records, answers = records[: cfg.limit], answers[: cfg.limit]
    else:
        records, answers = _answer(cfg, output_dir)
    try:
        result = evaluate_responses(records, answers, judge, cfg.exact_match_max_words)
    finally:
        if judge is not None:
            judge.backend.close()
    write_judge_json(output_dir / "judge.json", result)
    log_to_loggers(instantiate_dict(cfg.get("logger")), result)
    for line in format_summary(result).splitlines():
        log.info("%s", line)
    return result.metrics


def evaluate_pairwise(cfg: DictConfig, output_dir: Path) -> dict[str, float]:
    from tunelab.judge.evaluate import build_judge, read_responses, write_json
    from tunelab.judge.pairwise import compare, match_answers

    if not (cfg.get("responses_a") and cfg.get("responses_b")):
        raise ValueError("mode=pairwise needs responses_a=... and responses_b=... (two files)")
    judge = build_judge(cfg.get("judge"))
    if judge is None:
        raise ValueError("mode=pairwise needs a judge: judge=local|ollama|openai")
    rec_a, ans_a, _ = read_responses(cfg.responses_a, cfg.response_key)
    rec_b, ans_b, _ = read_responses(cfg.responses_b, cfg.response_key)
    matched, unmatched_a, unmatched_b = match_answers(rec_a, ans_a, rec_b, ans_b)
    if unmatched_a or unmatched_b:
        log.warning(
            "pairwise: %d records of responses_a and %d of responses_b have no partner; "
            "compared %d pairs",
            unmatched_a,
            unmatched_b,
            len(matched),
        )
    if not matched:
        raise ValueError(
            f"pairwise: {cfg.responses_a} and {cfg.responses_b} share no record (matched by "
            "instruction, input and reference)"
        )
    if cfg.get("limit"):
        matched = matched[: cfg.limit]
    try:
        rows, summary = compare(judge.backend, judge.pairwise_prompt(), matched)
    finally:
        judge.backend.close()
    summary = {
        **summary,
        "responses_a": str(cfg.responses_a),
        "responses_b": str(cfg.responses_b),
        "unmatched_a": unmatched_a,
        "unmatched_b": unmatched_b,
        "judge": judge.backend.describe(),
    }
    write_json(output_dir / "pairwise.json", {"summary": summary, "records": rows})
    log.info(
        "pairwise (a=%s vs b=%s): a wins %d, ties %d, losses %d, failures %d; "
        "position consistency %s",
        cfg.responses_a,
        cfg.responses_b,
        summary["wins"],
        summary["ties"],
        summary["losses"],
        summary["failures"],
        "n/a"
        if summary["position_consistency"] is None
        else f"{summary['position_consistency']:.2f}",
    )
    keys = ("wins", "ties", "losses", "failures", "position_consistency", "win_rate")
    metrics = {f"pairwise/{k}": float(summary[k]) for k in keys if summary[k] is not None}
    for logger in instantiate_dict(cfg.get("logger")):
        logger.log_metrics(metrics, step=0)
        logger.save()
    return metrics


def _evaluation_modes() -> dict[str, Any]:
    """Modes whose logic lives in tunelab.evaluation (multiple choice, harness, reward)."""
    from tunelab.evaluation import entry

    return {
        "choice": entry.run_choice,
        "reward": entry.run_reward,
        "harness": entry.run_harness_mode,
    }


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Run one evaluation; returns the metrics also written to metrics.json."""
    from tunelab.judge.evaluate import write_json

    output_dir = Path(cfg.paths.output_dir)
    with open_dict(cfg):
        cfg.pop("callbacks", None)  # conf/judge/* add the training callback; not used here
    save_and_print_config(cfg, output_dir, print_tree=cfg.extras.get("print_config", True))
    L.seed_everything(cfg.seed, workers=True)
    mode = cfg.get("mode", "single")
    modes = {"single": evaluate_single, "pairwise": evaluate_pairwise, **_evaluation_modes()}
    if mode not in modes:
        raise ValueError(f"mode: expected one of {', '.join(modes)}, got {mode!r}")
    try:
        metrics = modes[mode](cfg, output_dir)
    finally:
        _finish_wandb()
    write_json(output_dir / "metrics.json", dict(sorted(metrics.items())))
    log.info("eval folder: %s", output_dir)
    return metrics


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="eval")
def main(cfg: DictConfig) -> Any:
    from tunelab.utils.errors import friendly_errors

    with friendly_errors():
        return evaluate(cfg)


if __name__ == "__main__":
    main()
