"""`judge=reward`: a reward model (task=reward checkpoint) as a judge backend. It scores each
(record, answer) directly, the prompt rendered in the reward model's own prompt style and the
answer encoded as in training; the score is the raw reward (an unbounded real number, so the
judge prompt's 0-100 scale and histogram do not apply). Pairwise mode is refused: compare two
runs by their mean reward instead."""

from __future__ import annotations

from typing import Any

from tunelab.judge.backends import JudgeBackend, JudgeError
from tunelab.judge.parsing import OK


class RewardJudge(JudgeBackend):
    kind = "reward"

    def __init__(
        self,
        source: str | None = None,
        prompt_style: str | None = None,
        batch_size: int = 8,
        max_length: int = 512,
        max_prompt_length: int = 256,
        device: str = "auto",
    ) -> None:
        super().__init__(str(source), timeout=1.0, retries=0, backoff=0.0)
        if not 0 < max_prompt_length < max_length:
            raise ValueError(
                "judge.backend: need 0 < max_prompt_length < max_length, got "
                f"{max_prompt_length} and {max_length}"
            )
        self.source, self.prompt_style, self.batch_size = str(source), prompt_style, batch_size
        self.max_length, self.max_prompt_length, self.device = max_length, max_prompt_length, device
        self._loaded: tuple[Any, Any, str] | None = None

    @property
    def where(self) -> str:
        return f"reward model {self.source}"

    def describe(self) -> dict[str, Any]:
        return {"backend": self.kind, "model": self.source}

    def _model(self):
        if self._loaded is None:
            if not self.source or self.source == "None":
                raise JudgeError(
                    "judge.backend.source: give a task=reward checkpoint or run folder"
                )
            from tunelab.serve import resolve_device
            from tunelab.tasks.reward import load_reward_model

            rm, tok, style = load_reward_model(self.source)
            rm.to(resolve_device(self.device))
            self._loaded = (rm, tok, self.prompt_style or style)
        return self._loaded

    def _once(self, prompt: str) -> str:
        raise JudgeError(
            "judge=reward scores (record, answer) pairs itself; it cannot answer a judge prompt "
            "(pairwise mode: compare the two runs' mean rewards instead)"
        )

    def score_answers(self, records: list[Any], answers: list[str]) -> list[dict[str, Any]]:
        """One judge row per answer: the reward as `score`, status ok."""
        from tunelab.data.preference import PreferencePair, encode_pair
        from tunelab.data.prompts import get_style

        rm, tok, style_name = self._model()
        style = get_style(style_name, tok)
        seqs = []
        for rec, ans in zip(records, answers, strict=True):
            pair = PreferencePair(rec, ans or " ", ans or " ")
            ex = encode_pair(pair, style, tok, self.max_length, self.max_prompt_length)
            seqs.append(ex.prompt + ex.chosen)
        rewards = rm.score(seqs, tok.pad_id, self.batch_size)
        return [
            {"score": float(r), "status": OK, "judge_raw": f"{r:.6f}", "error": None}
            for r in rewards
        ]

    def close(self) -> None:
        self._loaded = None
