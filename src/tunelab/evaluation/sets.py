"""Multiple-choice sets as configs (`conf/data/mc_*.yaml`): a file or an embedded set, its
style, and its few-shot dev split. Evaluation data, not training data: `setup()` refuses to
train on it with one line."""

from __future__ import annotations

import random
from pathlib import Path

import lightning as L

from tunelab.evaluation.choice import SAMPLERS, check_style
from tunelab.evaluation.items import ChoiceItem, load_items

EMBEDDED_DIR = Path(__file__).resolve().parents[1] / "data" / "embedded" / "mc"
# name -> (file, style)
EMBEDDED_SETS = {
    "python_semantics": ("python_semantics.jsonl", "cloze"),
    "prose_cloze": ("prose_cloze.jsonl", "cloze"),
}


class ChoiceSet(L.LightningDataModule):
    """Where the items come from and how they are asked.

    path: a JSONL / MMLU CSV file or a folder of them; or embedded: a name in EMBEDDED_SETS.
    style: mmlu | completion | cloze (null: the embedded set's own, else completion).
    dev_path: few-shot examples; without it and with k_shot > 0, `k_shot` items per subject
    (seeded by fewshot_seed) are moved from the set into the dev split and not scored.
    """

    def __init__(
        self,
        path: str | None = None,
        embedded: str | None = None,
        format: str = "auto",
        style: str | None = None,
        subject: str | None = None,
        dev_path: str | None = None,
        k_shot: int = 0,
        fewshot_sampler: str = "random",
        fewshot_seed: int = 1234,
        limit: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if path is not None and embedded is not None:
            raise ValueError("data: give one of data.path=... or data.embedded=..., not both")
        if embedded is not None and embedded not in EMBEDDED_SETS:
            raise ValueError(
                f"data.embedded: unknown set {embedded!r}; known: {', '.join(EMBEDDED_SETS)}"
            )
        if style is None:
            style = EMBEDDED_SETS[embedded][1] if embedded else "completion"
        check_style(style)
        if fewshot_sampler not in SAMPLERS:
            raise ValueError(
                f"data.fewshot_sampler: expected one of {', '.join(SAMPLERS)}, got "
                f"{fewshot_sampler!r}"
            )
        if int(k_shot) < 0:
            raise ValueError(f"data.k_shot must be >= 0, got {k_shot}")
        self.path: Path | None = None
        if path or embedded:
            self.path = Path(path) if path else EMBEDDED_DIR / EMBEDDED_SETS[embedded][0]
        self.format, self.style, self.subject = format, style, subject
        self.dev_path = Path(dev_path) if dev_path else None
        self.k_shot, self.fewshot_sampler, self.fewshot_seed = (
            int(k_shot),
            fewshot_sampler,
            fewshot_seed,
        )
        self.limit = limit
        self.name = name or embedded or (self.path.stem if self.path else "choice")

    def connect(self, tokenizer, prompt_style, max_length=None) -> None:
        """Nothing to prepare (the scorer encodes text itself)."""

    def setup(self, stage: str | None = None) -> None:
        raise ValueError(
            f"data={self.name}: a multiple-choice evaluation set; use it with "
            "`python -m tunelab.eval mode=choice` or callbacks.choice_eval, not for training"
        )

    def load(self) -> tuple[list[ChoiceItem], list[ChoiceItem]]:
        """(items to score, dev items for few-shot prompts)."""
        if self.path is None:
            raise ValueError("data.path: give the multiple-choice file (JSONL or MMLU CSV)")
        items = load_items(self.path, self.format, self.subject)
        if self.dev_path is not None:
            dev = load_items(self.dev_path, self.format, self.subject)
        elif self.k_shot:
            rng = random.Random(self.fewshot_seed)
            by_subject: dict[str, list[int]] = {}
            for i, it in enumerate(items):
                by_subject.setdefault(it.subject, []).append(i)
            dev_idx: set[int] = set()
            for subject in sorted(by_subject):
                idx = by_subject[subject]
                if len(idx) <= self.k_shot:
                    raise ValueError(
                        f"data.k_shot={self.k_shot}: subject {subject!r} of {self.path} has only "
                        f"{len(idx)} items (give dev_path=... or a smaller k_shot)"
                    )
                dev_idx.update(rng.sample(idx, self.k_shot))
            dev = [items[i] for i in sorted(dev_idx)]
            items = [it for i, it in enumerate(items) if i not in dev_idx]
        else:
            dev = []
        if self.limit:
            items = items[: int(self.limit)]
        return items, dev
