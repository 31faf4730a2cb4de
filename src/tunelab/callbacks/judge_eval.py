"""At the end of fit: judge the test-split answers and compute reference metrics on them.

Runs after `GenerateResponses` (it reads the responses.json that callback wrote; without that
callback it answers the test split itself and writes responses.json). Writes judge.json, logs
judge/mean, judge/parse_failures, eval/{exact_match,rouge_l,bleu} to every logger (W&B also gets
a score histogram and a per-record table) and adds them to the run's metrics.json.

When the judge cannot work (unreachable after retries, key refused) the checkpoints and
responses.json are already written; `on_unreachable: error` stops with one clear line naming the
command that judges them later, `warn` logs it and keeps the reference metrics.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch

from tunelab.callbacks.responses import GenerateResponses, answer_records, write_responses
from tunelab.data.records import Record
from tunelab.judge.backends import JudgeError, LocalJudge
from tunelab.judge.evaluate import (
    EvalResult,
    build_judge,
    evaluate_responses,
    format_summary,
    log_to_loggers,
    read_responses,
    write_judge_json,
)

log = logging.getLogger(__name__)


class JudgeEval(L.Callback):
    def __init__(
        self,
        judge: Any = None,
        output_dir: str = ".",
        limit: int | None = None,
        max_new_tokens: int = 128,
        batch_size: int = 8,
        on_unreachable: str = "error",
        preflight: bool = True,
        exact_match_max_words: int = 5,
    ) -> None:
        if on_unreachable not in ("error", "warn"):
            raise ValueError(
                f"callbacks.judge_eval.on_unreachable: expected 'error' or 'warn', "
                f"got {on_unreachable!r}"
            )
        self.judge = build_judge(judge)  # validates the prompt now; clients connect on first use
        self.output_dir = Path(output_dir)
        self.limit, self.max_new_tokens, self.batch_size = limit, max_new_tokens, batch_size
        self.on_unreachable, self.preflight = on_unreachable, preflight
        self.exact_match_max_words = exact_match_max_words
        self.result: EvalResult | None = None
        self.error: str | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not (self.preflight and self.judge and trainer.is_global_zero):
            return
        if isinstance(self.judge.backend, LocalJudge):
            return
        reason = self.judge.backend.ping()
        if reason:
            log.warning(
                "judge %s does not answer now (%s); training goes on, and the judging at the end "
                "will try again",
                self.judge.backend.where,
                reason,
            )

    def _answers(self, trainer: L.Trainer, pl_module: L.LightningModule):
        # The responses callback comes first (conf/judge/* add this callback after the defaults).
        responder = next((c for c in trainer.callbacks if isinstance(c, GenerateResponses)), None)
        if responder is not None and responder.path is not None:
            records, answers, _ = read_responses(responder.path)
            return records[: self.limit], answers[: self.limit], responder.path
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "test_records"):
            log.warning("judge: no responses callback and no test split; nothing to judge")
            return [], [], None
        records: list[Record] = dm.test_records()
        records = records[: self.limit] if self.limit else records
        if not records:
            return [], [], None
        answers = answer_records(
            pl_module.model,
            pl_module.tokenizer,
            pl_module.prompt_style,
            records,
            self.max_new_tokens,
            self.batch_size,
        )
        path = write_responses(self.output_dir / "responses.json", records, answers)
        return records, answers, path

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        records, answers, responses_path = self._answers(trainer, pl_module)
        if not records:
            log.warning("judge: the test split is empty; nothing judged")
            return
        try:
            result = evaluate_responses(records, answers, self.judge, self.exact_match_max_words)
        except JudgeError as e:
            self.error = str(e)
            rerun = (
                f"python -m tunelab.eval responses={responses_path} judge=... "
                "(checkpoints and responses.json are kept)"
            )
            if self.on_unreachable == "error":
                raise JudgeError(f"{e}; judge later with: {rerun}") from None
            log.error("%s; reference metrics only. Judge later with: %s", e, rerun)
            result = evaluate_responses(records, answers, None, self.exact_match_max_words)
        path = write_judge_json(self.output_dir / "judge.json", result)
        self.result = result
        for line in format_summary(result).splitlines():
            log.info("%s", line)
        log.info("judge: %d rows written to %s", len(result.rows), path)
        log_to_loggers(trainer.loggers, result, step=trainer.global_step)
        # train() writes metrics.json from callback_metrics after fit: the judge's numbers too.
        for k, v in result.metrics.items():
            trainer.callback_metrics[k] = torch.tensor(v, dtype=torch.float64)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.judge is not None:
            self.judge.backend.close()
