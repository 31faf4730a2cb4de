"""At the end of fit: answer the test split and write `responses.json` (the seed's shape)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L

from tunelab.data.prompts import get_style
from tunelab.data.records import Record
from tunelab.models.decoder import Decoder
from tunelab.models.generation import generate
from tunelab.models.tokenizer import Tokenizer
from tunelab.utils.io import write_json

log = logging.getLogger(__name__)


def answer_records(
    model: Decoder,
    tokenizer: Tokenizer,
    style_name: str,
    records: list[Record],
    max_new_tokens: int = 128,
    batch_size: int = 8,
) -> list[str]:
    """Greedy answers (KV cache), stopping at end-of-text, the style's stop strings, or the limit."""
    style = get_style(style_name, tokenizer)
    stop_ids = set(tokenizer.stop_ids) | {tokenizer.eos_id}
    prompts = [style.encode_prompt(r, tokenizer) for r in records]
    # Batch prompts of similar length together: less left padding, same answers.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        outs = generate(
            model,
            [prompts[i] for i in idx],
            max_new_tokens=max_new_tokens,
            stop_ids=sorted(stop_ids),
        )
        for i, out in zip(idx, outs, strict=True):
            answers[i] = clean_answer(tokenizer.decode(out), style.stop_strings)
    return answers


def clean_answer(text: str, stop_strings: tuple[str, ...]) -> str:
    for s in stop_strings:
        pos = text.find(s)
        if pos >= 0:
            text = text[:pos]
    return text.strip()


def write_responses(
    path: Path, records: list[Record], answers: list[str], key: str = "model_response"
) -> Path:
    rows: list[dict[str, Any]] = []
    for r, a in zip(records, answers, strict=True):
        row = (
            dict(r.raw)
            if r.raw
            else {"instruction": r.instruction, "input": r.input, "output": r.output}
        )
        row[key] = a
        rows.append(row)
    return write_json(path, rows)


class GenerateResponses(L.Callback):
    """Writes `<output_dir>/responses.json` for the datamodule's test split after training."""

    def __init__(
        self,
        output_dir: str,
        max_new_tokens: int = 128,
        batch_size: int = 8,
        limit: int | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.max_new_tokens, self.batch_size, self.limit = max_new_tokens, batch_size, limit
        self.path: Path | None = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "test_records"):
            return
        records = dm.test_records()[: self.limit] if self.limit else dm.test_records()
        if not records:
            log.warning("responses: the test split is empty; responses.json not written")
            return
        answers = answer_records(
            pl_module.model,
            pl_module.tokenizer,
            pl_module.prompt_style,
            records,
            self.max_new_tokens,
            self.batch_size,
        )
        self.path = write_responses(self.output_dir / "responses.json", records, answers)
        log.info("responses: %d answers written to %s", len(answers), self.path)
