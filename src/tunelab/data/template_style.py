"""Prompt style `model`: the checkpoint's own chat template (tokenizer_config.json
`chat_template` or the GGUF's `tokenizer.chat_template`), rendered as transformers renders it.

A record becomes messages: its system prompt, its earlier turns, the user turn (instruction and
input) and, for training, the assistant's answer. For SFT with `mask_prompt`, every assistant turn
is trained and every other token masked: turn k spans from the end of the conversation before it
rendered with the generation prompt to where the whole conversation leaves the conversation up to
it (after the answer and its end-of-turn text); the first rendering must be a prefix of the whole
and the answer must lie in the turn (a template that renders earlier turns differently once later
ones follow, e.g. one that drops past reasoning, is refused in one line). The ids are those
of the whole conversation, encoded once; a token is trained when it starts inside a turn.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from tunelab.data.prompts import MODEL_STYLE, PromptStyle, _user_text
from tunelab.data.records import Record
from tunelab.models.chat_template import Message, render, render_segments
from tunelab.models.tokenizer import Segment, Tokenizer


@dataclass(frozen=True)
class ModelTemplate(PromptStyle):
    name: str = MODEL_STYLE
    template: str = ""
    tokens: dict[str, str] = field(default_factory=dict)
    specials: dict[str, int] = field(default_factory=dict)
    trains_every_turn: bool = True

    @classmethod
    def for_tokenizer(cls, tokenizer: Tokenizer | None) -> ModelTemplate:
        if tokenizer is None or not tokenizer.chat_template:
            raise KeyError(
                "prompt style 'model' needs the model's own chat template, and its files carry "
                "none (tokenizer_config.json chat_template / GGUF tokenizer.chat_template); "
                "choose another prompt style"
            )
        tokens = dict(tokenizer.template_tokens)
        for role, i in (("eos_token", tokenizer.eos_id), ("bos_token", tokenizer.bos_id)):
            if role not in tokens and i is not None:
                tokens[role] = tokenizer.decode([i])
        stops = tuple(dict.fromkeys(tokenizer.decode([i]) for i in tokenizer.stop_ids))
        return cls(
            template=tokenizer.chat_template,
            tokens=tokens,
            specials=tokenizer.special_tokens,
            stop_strings=stops,
        )

    # -- messages ----------------------------------------------------------------------------
    @staticmethod
    def messages(record: Record, answer: str | None = None) -> list[Message]:
        msgs: list[Message] = []
        if record.system:
            msgs.append({"role": "system", "content": record.system})
        for user, assistant in record.history:
            msgs.append({"role": "user", "content": user})
            msgs.append({"role": "assistant", "content": assistant})
        msgs.append({"role": "user", "content": _user_text(record.instruction, record.input)})
        if answer is not None:
            msgs.append({"role": "assistant", "content": answer})
        return msgs

    def render(self, msgs: list[Message], add_generation_prompt: bool) -> str:
        return render(self.template, msgs, add_generation_prompt, self.tokens)

    def segments(self, msgs: list[Message], add_generation_prompt: bool) -> list[Segment]:
        return render_segments(
            self.template, msgs, add_generation_prompt, self.tokens, self.specials
        )

    # -- PromptStyle -------------------------------------------------------------------------
    def prompt_segments(self, record: Record) -> list[Segment]:
        return self.segments(self.messages(record), add_generation_prompt=True)

    def answer_segments(self, answer: str) -> list[Segment]:
        raise NotImplementedError(
            "prompt style 'model': an answer's tokens depend on its conversation; "
            "use encode_completion(record, answer, tokenizer)"
        )

    def encode_answer(self, answer: str, tokenizer: Tokenizer) -> list[int]:
        return self.encode_completion(Record(instruction=""), answer, tokenizer)

    def encode_completion(self, record: Record, answer: str, tokenizer: Tokenizer) -> list[int]:
        msgs = self.messages(record, answer)
        prompt = self.render(msgs[:-1], add_generation_prompt=True)
        segments = self.segments(msgs, add_generation_prompt=False)
        full = "".join(t for t, _ in segments)
        if not full.startswith(prompt):
            raise ValueError(
                "prompt style 'model': the chat template renders the conversation with the "
                "answer differently from the prompt it gives for generation; cannot split it"
            )
        ids, starts = tokenizer.encode_segments_with_offsets(segments)
        return [i for i, s in zip(ids, starts, strict=True) if s >= len(prompt)]

    def encode_sft(self, record: Record, tokenizer: Tokenizer) -> tuple[list[int], list[bool]]:
        msgs = self.messages(record, record.output)
        segments = self.segments(msgs, add_generation_prompt=False)
        full = "".join(t for t, _ in segments)
        spans = []
        turn = 0
        for k, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            turn += 1
            before = self.render(msgs[:k], add_generation_prompt=True)
            upto = self.render(msgs[: k + 1], add_generation_prompt=False)
            # The turn ends where the whole conversation leaves `upto` (Phi-3's template ends a
            # conversation with eos_token, which a later turn replaces by its own text).
            end = len(os.path.commonprefix([upto, full]))
            if not (
                full.startswith(before)
                and upto.startswith(before)
                and m["content"].strip() in upto[len(before) : end]
            ):
                raise ValueError(
                    f"prompt style 'model': the chat template renders assistant turn {turn} "
                    "differently once later turns follow, so its tokens cannot be told apart for "
                    "answer-only masking; set data.mask_prompt=false or use single-turn records"
                )
            spans.append((len(before), end))
        ids, starts = tokenizer.encode_segments_with_offsets(segments)
        ends = [*starts[1:], len(full)]
        # a token is trained when it lies inside a turn (a special token only half inside, where
        # `<|endoftext|>` and `<|user|>` share "<|", is not)
        trained = [
            any(a <= s and e <= b for a, b in spans) for s, e in zip(starts, ends, strict=True)
        ]
        return ids, trained
