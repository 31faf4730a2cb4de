"""Multiple choice by log-likelihood, with lm-evaluation-harness's conventions.

Styles (how an item becomes a context and one continuation per choice; the target delimiter is
one space, few-shot examples are separated by a blank line):

- `mmlu`: the prompt lists the lettered choices and the continuations are the letters:
  `"The following are multiple choice questions (with answers) about {subject}.\\n\\n"` +
  shots + `"{question}\\nA. {choice}\\n...\\nAnswer:"`, continuations `" A"`, `" B"`, ...
  (the harness's `mmlu` task);
- `completion`: `"Question: {question}\\nAnswer:"`, continuations `" {choice}"` (ARC-style);
- `cloze`: the question is the text itself, continuations `" {choice}"` (HellaSwag/LAMBADA-style).

`acc` takes the choice with the highest summed log-probability; `acc_norm` divides each by the
length of the choice text (the harness divides by `len(choice)` of the choice string, which is
its byte length for ASCII text). Few-shot examples come from a dev split: the same subject's dev
items when there are any, else all of them; `fewshot_sampler: first_n` takes the first k (as the
harness does for MMLU), `random` a seeded sample per item (seed and item position fixed).
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from tunelab.evaluation.items import LETTERS, ChoiceItem
from tunelab.evaluation.loglik import Scored, encode_pair, score_pairs
from tunelab.models.decoder import Decoder
from tunelab.models.tokenizer import Tokenizer

STYLES = ("mmlu", "completion", "cloze")
SAMPLERS = ("random", "first_n")


def check_style(style: str) -> None:
    if style not in STYLES:
        raise ValueError(f"style: expected one of {', '.join(STYLES)}, got {style!r}")


def doc_text(item: ChoiceItem, style: str) -> str:
    if style == "mmlu":
        lines = [item.question.strip()]
        lines += [f"{LETTERS[i]}. {c}" for i, c in enumerate(item.choices)]
        return "\n".join(lines) + "\nAnswer:"
    if style == "completion":
        return f"Question: {item.question}\nAnswer:"
    return item.question


def choice_texts(item: ChoiceItem, style: str) -> list[str]:
    """What each continuation says after the delimiter (letters for mmlu)."""
    if style == "mmlu":
        return [LETTERS[i] for i in range(len(item.choices))]
    return list(item.choices)


def description(item: ChoiceItem, style: str) -> str:
    if style == "mmlu":
        subject = item.subject.replace("_", " ")
        return f"The following are multiple choice questions (with answers) about {subject}.\n\n"
    return ""


def context_for(item: ChoiceItem, style: str, shots: list[ChoiceItem]) -> str:
    parts = [doc_text(s, style) + " " + choice_texts(s, style)[s.answer] + "\n\n" for s in shots]
    return description(item, style) + "".join(parts) + doc_text(item, style)


def pick_shots(
    item: ChoiceItem,
    position: int,
    dev: list[ChoiceItem],
    k: int,
    sampler: str,
    seed: int,
) -> list[ChoiceItem]:
    if k <= 0:
        return []
    pool = [d for d in dev if d.subject == item.subject] or dev
    pool = [d for d in pool if d is not item]
    if len(pool) < k:
        raise ValueError(
            f"k_shot={k}: only {len(pool)} dev items for subject {item.subject!r}; give more dev "
            "items or a smaller k_shot"
        )
    if sampler == "first_n":
        return pool[:k]
    return random.Random(f"{seed}:{position}").sample(pool, k)


@dataclass
class ChoiceResult:
    rows: list[dict[str, Any]]
    metrics: dict[str, float]
    summary: dict[str, Any] = field(default_factory=dict)


def build_requests(
    items: list[ChoiceItem],
    style: str,
    dev: list[ChoiceItem] | None = None,
    k_shot: int = 0,
    fewshot_sampler: str = "random",
    seed: int = 1234,
) -> list[tuple[str, list[str]]]:
    """(context, continuations) per item, the continuations with the target delimiter."""
    check_style(style)
    if fewshot_sampler not in SAMPLERS:
        raise ValueError(
            f"fewshot_sampler: expected one of {', '.join(SAMPLERS)}, got {fewshot_sampler!r}"
        )
    out = []
    for i, item in enumerate(items):
        shots = pick_shots(item, i, dev or [], k_shot, fewshot_sampler, seed)
        out.append((context_for(item, style, shots), [" " + c for c in choice_texts(item, style)]))
    return out


def evaluate_choice(
    model: Decoder,
    tokenizer: Tokenizer,
    items: list[ChoiceItem],
    style: str = "completion",
    dev: list[ChoiceItem] | None = None,
    k_shot: int = 0,
    fewshot_sampler: str = "random",
    seed: int = 1234,
    batch_size: int = 8,
    shared_prefix: bool = True,
) -> ChoiceResult:
    """Score every choice of every item; acc, acc_norm, per-subject acc, chance level."""
    if not items:
        raise ValueError("multiple choice: no items to evaluate")
    requests = build_requests(items, style, dev, k_shot, fewshot_sampler, seed)
    pairs, owner = [], []
    for i, (ctx, conts) in enumerate(requests):
        for cont in conts:
            pairs.append(encode_pair(tokenizer, ctx, cont))
            owner.append(i)
    scored = score_pairs(model, pairs, batch_size, shared_prefix)
    per_item: list[list[Scored]] = [[] for _ in items]
    for i, s in zip(owner, scored, strict=True):
        per_item[i].append(s)
    return summarise(items, style, per_item)


def summarise(items: list[ChoiceItem], style: str, per_item: list[list[Scored]]) -> ChoiceResult:
    rows = []
    by_subject: dict[str, list[int]] = defaultdict(list)
    for item, scores in zip(items, per_item, strict=True):
        lls = [s.logprob for s in scores]
        lengths = [float(len(c)) for c in choice_texts(item, style)]
        pred = max(range(len(lls)), key=lambda j: lls[j])
        pred_norm = max(range(len(lls)), key=lambda j: lls[j] / lengths[j])
        rows.append(
            {
                "where": item.where,
                "subject": item.subject,
                "answer": item.answer,
                "pred": pred,
                "pred_norm": pred_norm,
                "correct": pred == item.answer,
                "correct_norm": pred_norm == item.answer,
                "logprobs": lls,
                "is_greedy": [s.is_greedy for s in scores],
            }
        )
        by_subject[item.subject].append(len(rows) - 1)
    n = len(rows)
    metrics = {
        "acc": sum(r["correct"] for r in rows) / n,
        "acc_norm": sum(r["correct_norm"] for r in rows) / n,
        "chance": sum(1 / len(it.choices) for it in items) / n,
        "n": float(n),
    }
    if len(by_subject) > 1:
        for subject, idx in sorted(by_subject.items()):
            metrics[f"acc/{subject}"] = sum(rows[i]["correct"] for i in idx) / len(idx)
    summary = {"style": style, "n": n, "subjects": {s: len(i) for s, i in by_subject.items()}}
    return ChoiceResult(rows, metrics, summary)
