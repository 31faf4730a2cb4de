"""Multiple-choice accuracy during training: at the end of fit, and optionally before the first
update and every N validations (forgetting curves: old- and new-domain *ability* over steps).

Logs `choice/<set>/acc`, `choice/<set>/acc_norm` at the trainer's step to every logger, puts the
last values into the run's metrics.json, and writes every measurement to choice_eval.json
(atomically). Sets are names of embedded sets (`python_semantics`, `prose_cloze`) or ChoiceSet
arguments (`{path: ..., style: ..., name: ...}`); they are read when the callback is built, so a
bad file fails before training.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import torch

from tunelab.evaluation.choice import evaluate_choice
from tunelab.evaluation.io import write_json_atomic
from tunelab.evaluation.sets import ChoiceSet

log = logging.getLogger(__name__)


def _choice_set(spec: Any) -> ChoiceSet:
    if isinstance(spec, str):
        return ChoiceSet(embedded=spec)
    if hasattr(spec, "items"):
        return ChoiceSet(**dict(spec.items()))
    raise ValueError(
        f"callbacks.choice_eval.sets: expected set names or {{path: ...}} entries, got {spec!r}"
    )


class ChoiceEval(L.Callback):
    def __init__(
        self,
        sets: list[Any] | tuple[Any, ...] = ("python_semantics", "prose_cloze"),
        output_dir: str = ".",
        every_n_validations: int = 0,
        at_start: bool = False,
        limit: int | None = None,
        batch_size: int = 8,
    ) -> None:
        if int(every_n_validations) < 0:
            raise ValueError(
                f"callbacks.choice_eval.every_n_validations must be >= 0, got {every_n_validations}"
            )
        self.sets = [_choice_set(s) for s in sets]
        if not self.sets:
            raise ValueError("callbacks.choice_eval.sets: give at least one set")
        self.data = {s.name: s.load() for s in self.sets}
        if limit:
            self.data = {k: (items[: int(limit)], dev) for k, (items, dev) in self.data.items()}
        self.output_dir = Path(output_dir)
        self.every_n = int(every_n_validations)
        self.at_start, self.batch_size = at_start, batch_size
        self.validations = 0
        self.history: list[dict[str, Any]] = []
        self._last_step: int | None = None

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        step = trainer.global_step
        context = trainer.precision_plugin.forward_context() if trainer else nullcontext()
        metrics: dict[str, float] = {}
        with context:
            for s in self.sets:
                items, dev = self.data[s.name]
                result = evaluate_choice(
                    pl_module.model,
                    pl_module.tokenizer,
                    items,
                    s.style,
                    dev,
                    s.k_shot,
                    s.fewshot_sampler,
                    s.fewshot_seed,
                    self.batch_size,
                )
                for k in ("acc", "acc_norm"):
                    metrics[f"choice/{s.name}/{k}"] = float(result.metrics[k])
                log.info(
                    "choice %s at step %d: acc %.4f, acc_norm %.4f (chance %.4f, %d items)",
                    s.name,
                    step,
                    result.metrics["acc"],
                    result.metrics["acc_norm"],
                    result.metrics["chance"],
                    len(items),
                )
        self.history.append({"step": step, **metrics})
        self._last_step = step
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        for k, v in metrics.items():
            trainer.callback_metrics[k] = torch.tensor(v, dtype=torch.float64)
        write_json_atomic(self.output_dir / "choice_eval.json", {"history": self.history})
        return metrics

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_start and trainer.is_global_zero:
            self.measure(trainer, pl_module)
            pl_module.model.train()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self.every_n or not trainer.is_global_zero:
            return
        self.validations += 1
        if self.validations % self.every_n == 0 and self._last_step != trainer.global_step:
            self.measure(trainer, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self._last_step != trainer.global_step:
            self.measure(trainer, pl_module)
