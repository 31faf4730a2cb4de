"""tunelab models as an lm-evaluation-harness model (`lm_eval`, an optional dependency):

    python -m tunelab.eval mode=harness tasks=hellaswag,mmlu ckpt_path=...   # with internet
    lm_eval --model tunelab --model_args pretrained=<ckpt or preset> --tasks ...  # after import

`loglikelihood` and `loglikelihood_rolling` are `tunelab.evaluation.loglik`'s (the harness's own
encoding rules, so `mode=choice` and the harness agree item for item); `generate_until` is greedy
decoding with tunelab's KV-cache generator, cut at the first stop string. Sampling settings are
refused (one line) rather than ignored.
"""

from __future__ import annotations

import logging
from typing import Any

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from tunelab.evaluation.loglik import loglikelihood, loglikelihood_rolling
from tunelab.models.generation import generate

log = logging.getLogger(__name__)


@register_model("tunelab")
class TunelabLM(LM):
    def __init__(
        self,
        pretrained: str = "smollm2-135m",
        batch_size: int | str = 8,
        device: str = "auto",
        max_gen_toks: int = 256,
        loaded: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if loaded is None:
            from tunelab.models import load_pretrained
            from tunelab.serve import resolve_device

            loaded = load_pretrained(str(pretrained))
            loaded.model.to(resolve_device(device))
        self.loaded = loaded
        self.model, self.tokenizer = loaded.model.eval(), loaded.tokenizer
        self._batch_size = int(batch_size) if str(batch_size).isdigit() else 8
        self.max_gen_toks = int(max_gen_toks)

    def loglikelihood(
        self, requests: list[Any], disable_tqdm: bool = False
    ) -> list[tuple[float, bool]]:
        scored = loglikelihood(
            self.model, self.tokenizer, [r.args for r in requests], self._batch_size
        )
        return [(s.logprob, s.is_greedy) for s in scored]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        return [loglikelihood_rolling(self.model, self.tokenizer, r.args[0]) for r in requests]

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        out = []
        for r in requests:
            context, gen_kwargs = r.args
            kwargs = dict(gen_kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            if kwargs.pop("do_sample", False) or float(kwargs.pop("temperature", 0.0) or 0.0) > 0:
                raise ValueError("lm_eval tunelab model: only greedy generation is supported")
            unknown = sorted(k for k in kwargs if k not in ("top_p", "top_k"))
            if unknown:
                raise ValueError(f"lm_eval tunelab model: unsupported generation keys {unknown}")
            prompt = self.tokenizer.encode(context, allow_special=False) or [self.tokenizer.eos_id]
            prompt = prompt[-max(1, self.model.cfg.context_length - max_new) :]
            [ids] = generate(self.model, [prompt], max_new, self.tokenizer.stop_ids)
            text = self.tokenizer.decode(ids)
            for stop in until:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            out.append(text)
        return out


def run_harness(
    loaded: Any,
    tasks: list[str],
    include_path: str | None = None,
    num_fewshot: int | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    include_defaults: bool = True,
) -> dict[str, Any]:
    """`lm_eval.simple_evaluate` with a tunelab model; returns the harness's results dict.

    include_defaults=False indexes only `include_path`'s tasks (much faster to start)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path, include_defaults=include_defaults)
    return simple_evaluate(
        model=TunelabLM(loaded=loaded, batch_size=batch_size),
        tasks=tasks,
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=manager,
        log_samples=False,
    )
