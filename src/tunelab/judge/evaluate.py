"""Judging a list of answers, plus reference metrics on the same answers.

`evaluate_responses(records, answers, judge)` returns one row per record (score, status, the
judge's raw text, reference metrics) and a summary; nothing is skipped: every failure is a status,
counted in `judge/parse_failures` and in `status_counts`. Reference metrics come from torchmetrics:
exact match (SQuAD-normalised) for short references, ROUGE-L F1 per record, corpus BLEU (13a).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tunelab.data.records import (
    DataError,
    Record,
    check_unicode,
    parse_json,
    parse_record,
    read_json_text,
)
from tunelab.judge.backends import JudgeBackend, JudgeRequestError
from tunelab.judge.parsing import OK, STATUSES
from tunelab.judge.prompts import JudgePrompt, get_pairwise_prompt, get_prompt
from tunelab.utils.io import write_json as write_json_atomic

log = logging.getLogger(__name__)


@dataclass
class Judge:
    backend: JudgeBackend
    prompt: JudgePrompt
    pairwise_template: str | None = None

    def describe(self) -> dict[str, Any]:
        return {
            **self.backend.describe(),
            "prompt": self.prompt.name,
            "scale": [self.prompt.low, self.prompt.high],
        }

    def pairwise_prompt(self):
        return get_pairwise_prompt(self.pairwise_template)


def build_judge(cfg: DictConfig | dict | None) -> Judge | None:
    """A judge from a `judge` config node (conf/judge/*.yaml); None when there is none."""
    if cfg is None or (isinstance(cfg, dict | DictConfig) and not cfg):
        return None
    import hydra

    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    if "backend" not in cfg or cfg.backend is None:
        raise KeyError("judge.backend: missing; expected a backend config with a _target_")
    backend = hydra.utils.instantiate(cfg.backend)
    if not isinstance(backend, JudgeBackend):
        raise ValueError(
            f"judge.backend._target_ must build a tunelab.judge.backends.JudgeBackend, "
            f"got {type(backend).__name__}"
        )
    scale = cfg.get("scale")
    prompt = get_prompt(
        cfg.get("prompt", "score_0_100"),
        template=cfg.get("template"),
        template_file=cfg.get("template_file"),
        scale=list(scale) if scale is not None else None,
        marker=cfg.get("marker"),
    )
    pairwise_template = cfg.get("pairwise_template")
    get_pairwise_prompt(pairwise_template)  # checked now, not after an hour of training
    return Judge(backend, prompt, pairwise_template)


# Reading answers -----------------------------------------------------------------------------
def read_responses(
    path: str | Path, key: str = "model_response"
) -> tuple[list[Record], list[str], list[dict[str, Any]]]:
    """Records, answers and raw rows from a responses.json (a list of records plus `key`)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise FileNotFoundError(f"responses file not found: {path}")
    rows = parse_json(read_json_text(path, "responses file"), str(path), line=False)
    if not isinstance(rows, list) or not rows:
        raise DataError(f"{path}: expected a non-empty JSON list of records with {key!r}")
    records, answers = [], []
    for i, row in enumerate(rows):
        where = f"{path}[{i}]"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        if key not in row or not isinstance(row[key], str):
            raise DataError(f"{where}: missing string field {key!r} (the answer to judge)")
        check_unicode(row, where)
        records.append(parse_record(row, where, require_output=False))
        answers.append(row[key])
    return records, answers, rows


# Reference metrics ---------------------------------------------------------------------------
def reference_metrics(
    references: list[str], answers: list[str], exact_match_max_words: int = 5
) -> tuple[list[dict[str, float]], dict[str, float | int | None]]:
    """Per-record {rouge_l, exact_match?} and the summary eval/{exact_match, rouge_l, bleu}."""
    from torchmetrics.functional.text import rouge_score, sacre_bleu_score, squad

    per_row: list[dict[str, float]] = []
    em_values: list[float] = []
    for i, (ref, ans) in enumerate(zip(references, answers, strict=True)):
        row = {"rouge_l": float(rouge_score(ans, ref, rouge_keys=("rougeL",))["rougeL_fmeasure"])}
        if len(ref.split()) <= exact_match_max_words:
            em = squad(
                [{"prediction_text": ans, "id": str(i)}],
                [{"answers": {"answer_start": [0], "text": [ref]}, "id": str(i)}],
            )["exact_match"]
            row["exact_match"] = float(em) / 100.0
            em_values.append(row["exact_match"])
        per_row.append(row)
    n = len(per_row)
    bleu = float(sacre_bleu_score(answers, [[r] for r in references])) if n else None
    summary: dict[str, float | int | None] = {
        "eval/rouge_l": sum(r["rouge_l"] for r in per_row) / n if n else None,
        "eval/bleu": bleu,
        "eval/exact_match": sum(em_values) / len(em_values) if em_values else None,
        "eval/exact_match_n": len(em_values),
        "eval/n": n,
    }
    return per_row, summary


# Judging -------------------------------------------------------------------------------------
@dataclass
class EvalResult:
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)  # flat, numeric: for loggers


def histogram(scores: list[float], edges: list[float]) -> list[int]:
    counts = [0] * (len(edges) - 1)
    for s in scores:
        for b in range(len(counts)):
            last = b == len(counts) - 1
            if edges[b] <= s < edges[b + 1] or (last and s == edges[-1]):
                counts[b] += 1
                break
    return counts


def judge_answers(
    judge: Judge, records: list[Record], answers: list[str], chunk: int = 8
) -> list[dict[str, Any]]:
    """One row per record: score, status, the judge's raw text and any request error."""
    if hasattr(judge.backend, "score_answers"):  # judge=reward scores (record, answer) itself
        return judge.backend.score_answers(records, answers)
    rows: list[dict[str, Any]] = []
    for start in range(0, len(records), chunk):
        recs = records[start : start + chunk]
        prompts = [
            judge.prompt.render(r, a)
            for r, a in zip(recs, answers[start : start + chunk], strict=True)
        ]
        for raw in judge.backend.complete_many(prompts, judge.prompt.answer_prefix):
            if isinstance(raw, JudgeRequestError):
                rows.append(
                    {"score": None, "status": raw.status, "judge_raw": None, "error": str(raw)}
                )
            else:
                score, status = judge.prompt.parse(raw)
                rows.append({"score": score, "status": status, "judge_raw": raw, "error": None})
        done = min(start + chunk, len(records))
        log.info("judge: %d/%d answers judged", done, len(records))
    return rows


def judge_summary(rows: list[dict[str, Any]], prompt: JudgePrompt) -> dict[str, Any]:
    scores = [r["score"] for r in rows if r["status"] == OK]
    counts = Counter(r["status"] for r in rows)
    edges = prompt.bins()
    return {
        "prompt": prompt.name,
        "scale": [prompt.low, prompt.high],
        "n": len(rows),
        "scored": len(scores),
        "mean": sum(scores) / len(scores) if scores else None,
        "parse_failures": len(rows) - len(scores),
        "status_counts": {s: counts[s] for s in STATUSES if counts[s]}
        | {s: c for s, c in counts.items() if s not in STATUSES},
        "histogram": {"edges": edges, "counts": histogram(scores, edges)},
    }


def evaluate_responses(
    records: list[Record],
    answers: list[str],
    judge: Judge | None,
    exact_match_max_words: int = 5,
) -> EvalResult:
    """Reference metrics always; the judge's scores when there is a judge.

    Raises JudgeError / JudgeUnreachableError when the judge cannot work at all.
    """
    if len(records) != len(answers):
        raise ValueError(f"{len(records)} records but {len(answers)} answers")
    per_row, ref_summary = reference_metrics(
        [r.output for r in records], answers, exact_match_max_words
    )
    judged = judge_answers(judge, records, answers) if judge is not None else None
    rows = []
    for i, (rec, ans, ref_row) in enumerate(zip(records, answers, per_row, strict=True)):
        row: dict[str, Any] = {
            "index": i,
            "instruction": rec.instruction,
            "input": rec.input,
            "reference": rec.output,
            "model_response": ans,
        }
        if judged is not None:
            row.update(judged[i])
        row.update(ref_row)
        rows.append(row)
    summary: dict[str, Any] = {"reference": ref_summary}
    metrics = {k: float(v) for k, v in ref_summary.items() if v is not None}
    if judge is not None and judged is not None:
        js = judge_summary(judged, judge.prompt)
        summary["judge"] = {**judge.describe(), **js}
        metrics["judge/parse_failures"] = float(js["parse_failures"])
        metrics["judge/scored"] = float(js["scored"])
        if js["mean"] is not None:
            metrics["judge/mean"] = float(js["mean"])
    return EvalResult(rows, summary, metrics)


def write_json(path: Path, payload: Any) -> Path:
    return write_json_atomic(path, payload)  # temporary file + rename: never a truncated file


def write_judge_json(path: Path, result: EvalResult) -> Path:
    """judge.json: {"summary": {...}, "records": [one row per answer]}."""
    return write_json(path, {"summary": result.summary, "records": result.rows})


def format_summary(result: EvalResult) -> str:
    """A few human lines for the log / terminal."""
    lines = []
    j = result.summary.get("judge")
    if j:
        mean = "n/a" if j["mean"] is None else f"{j['mean']:.2f}"
        lines.append(
            f"judge ({j['backend']} {j['model']}, {j['prompt']} on {j['scale'][0]:g}-"
            f"{j['scale'][1]:g}): mean {mean} over {j['scored']}/{j['n']} answers; "
            f"parse failures {j['parse_failures']} {j['status_counts']}"
        )
    r = result.summary["reference"]

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    lines.append(
        f"reference metrics: exact match {fmt(r['eval/exact_match'])} "
        f"(over {r['eval/exact_match_n']} short references), ROUGE-L {fmt(r['eval/rouge_l'])}, "
        f"BLEU {fmt(r['eval/bleu'])} on {r['eval/n']} answers"
    )
    return "\n".join(lines)


def log_to_loggers(loggers: list[Any], result: EvalResult, step: int = 0) -> None:
    """Numbers to every Lightning logger; the score histogram and a per-record table to W&B."""
    metrics = {k: v for k, v in result.metrics.items() if math.isfinite(v)}
    for logger in loggers:
        logger.log_metrics(metrics, step=step)
        if type(logger).__name__ == "WandbLogger":
            _log_wandb(logger, result, step)
        logger.save()


def _log_wandb(logger: Any, result: EvalResult, step: int) -> None:
    import wandb

    columns = ["index", "instruction", "input", "reference", "model_response"]
    judged = "judge" in result.summary
    if judged:
        columns += ["score", "status", "judge_raw"]
    columns += ["rouge_l", "exact_match"]
    data = [[row.get(c) for c in columns] for row in result.rows]
    payload: dict[str, Any] = {
        "judge/table" if judged else "eval/table": wandb.Table(columns=columns, data=data)
    }
    if judged:
        hist = result.summary["judge"]["histogram"]
        payload["judge/histogram"] = wandb.Histogram(np_histogram=(hist["counts"], hist["edges"]))
    # Lightning's WandbLogger keeps W&B's own step and records the trainer step as a metric;
    # an explicit smaller step would make W&B drop the row.
    payload["trainer/global_step"] = step
    logger.experiment.log(payload)
