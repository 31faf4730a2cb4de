"""RewardBench-style accuracy on preference pairs: how often the chosen answer is scored above the
rejected one, per category, for up to three scorers on the same pairs:

- a reward model (task=reward checkpoint): r(prompt, answer) from its scalar head;
- a DPO policy's implicit reward: beta * (log pi(answer | prompt) - log pi_ref(answer | prompt)),
  the completion's summed log-probs (as DPO trains them) under the policy and its reference;
- an LLM judge in pairwise mode (both position orders; a win counts 1, a tie or an inconsistent
  pair 0.5, as RewardBench scores generative judges; unreadable verdicts are left out and counted).

Each scorer tokenises the pairs with its own tokenizer and prompt style, with the preference
data's truncation rules (`data.max_length`, `data.max_prompt_length`). Ties in a reward count 0.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from tunelab.data.preference import PreferencePair, encode_pair
from tunelab.data.prompts import get_style
from tunelab.evaluation.loglik import score_pairs
from tunelab.models.decoder import Decoder
from tunelab.models.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def categories(pairs: Sequence[PreferencePair], key: str | None) -> list[str]:
    out = []
    for p in pairs:
        raw = getattr(p.record, "raw", None) or {}
        value = raw.get(key) if key else None
        out.append(str(value) if value is not None else "all")
    return out


def _encoded(pairs, tokenizer, style, max_length, max_prompt_length):
    st = get_style(style, tokenizer)
    return [
        encode_pair(p, st, tokenizer, max_length, max_prompt_length, i) for i, p in enumerate(pairs)
    ]


def reward_model_correct(
    reward_model: Any,
    tokenizer: Tokenizer,
    style: str,
    pairs: Sequence[PreferencePair],
    max_length: int,
    max_prompt_length: int,
    batch_size: int = 8,
) -> list[float]:
    """1.0 where the reward model scores chosen above rejected, else 0.0."""
    examples = _encoded(pairs, tokenizer, style, max_length, max_prompt_length)
    seqs = [ex.prompt + ex.chosen for ex in examples] + [ex.prompt + ex.rejected for ex in examples]
    rewards = reward_model.score(seqs, tokenizer.pad_id, batch_size)
    n = len(examples)
    return [float(rewards[i] > rewards[n + i]) for i in range(n)]


def completion_logps(
    model: Decoder, examples: list[Any], batch_size: int = 8
) -> tuple[list[float], list[float]]:
    pairs = [(ex.prompt, ex.chosen) for ex in examples] + [
        (ex.prompt, ex.rejected) for ex in examples
    ]
    scored = [s.logprob for s in score_pairs(model, pairs, batch_size, shared_prefix=True)]
    n = len(examples)
    return scored[:n], scored[n:]


def implicit_reward_correct(
    policy: Decoder,
    reference: Decoder,
    tokenizer: Tokenizer,
    style: str,
    pairs: Sequence[PreferencePair],
    beta: float,
    max_length: int,
    max_prompt_length: int,
    batch_size: int = 8,
) -> list[float]:
    """1.0 where beta * (log pi - log pi_ref) is higher for chosen than for rejected."""
    examples = _encoded(pairs, tokenizer, style, max_length, max_prompt_length)
    pc, pr = completion_logps(policy, examples, batch_size)
    rc, rr = completion_logps(reference, examples, batch_size)
    return [float(beta * (pc[i] - rc[i]) > beta * (pr[i] - rr[i])) for i in range(len(examples))]


def judge_correct(judge: Any, pairs: Sequence[PreferencePair]) -> tuple[list[float | None], dict]:
    """Pairwise verdicts (both orders) of chosen vs rejected: 1 win, 0.5 tie, 0 loss, None unread."""
    from tunelab.judge.pairwise import compare

    matched = [(p.record, p.chosen, p.rejected) for p in pairs]
    rows, summary = compare(judge.backend, judge.pairwise_prompt(), matched, ("chosen", "rejected"))
    value = {"win": 1.0, "tie": 0.5, "loss": 0.0, None: None}
    return [value[r["outcome"]] for r in rows], summary


def accuracy_table(
    cats: list[str], correct: dict[str, list[float | None]]
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Rows per category (and `all`) with each method's accuracy and count; flat metrics."""
    names = sorted(set(cats))
    rows, metrics = [], {}
    for cat in [*names, "all"]:
        row: dict[str, Any] = {"category": cat}
        for method, values in correct.items():
            vals = [v for c, v in zip(cats, values, strict=True) if (cat == "all" or c == cat)]
            scored = [v for v in vals if v is not None]
            acc = sum(scored) / len(scored) if scored else None
            row[method] = acc
            row[f"{method}/n"] = len(scored)
            if acc is not None:
                metrics[f"reward/{method}/{'accuracy' if cat == 'all' else 'accuracy/' + cat}"] = (
                    acc
                )
        row["n"] = len([c for c in cats if cat == "all" or c == cat])
        rows.append(row)
    return rows, metrics


def format_table(rows: list[dict[str, Any]], methods: list[str]) -> str:
    head = f"{'category':<12}{'pairs':>7}" + "".join(f"{m:>16}" for m in methods)
    lines = [head]
    for r in rows:
        cells = "".join(
            f"{'n/a':>16}" if r[m] is None else f"{r[m]:>10.3f} ({r[m + '/n']:>3})" for m in methods
        )
        lines.append(f"{r['category']:<12}{r['n']:>7}" + cells)
    return "\n".join(lines)


def by_category(cats: list[str]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for c in cats:
        out[c] += 1
    return dict(out)
