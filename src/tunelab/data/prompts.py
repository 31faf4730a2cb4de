"""Prompt styles: how a record becomes the text the model sees.

A style renders the prompt (everything before the answer) and the answer's suffix (what ends an
answer: end-of-turn markers); the tokenizer's end-of-text token is appended by the dataset. The
style's name is saved beside checkpoints so generation later formats prompts the same way.

Styles render *segments*: (text, trusted) pieces. Template text is trusted and may contain
special tokens (`<|im_start|>`); record and message text is not, and is encoded as plain text
whatever it contains, so a user can never forge a turn (`Tokenizer.encode_segments`). Always
encode through `encode_prompt` / `encode_answer` / `encode_sft`, never `tokenizer.encode(prompt)`.
The `model` style (the checkpoint's own Jinja chat template) lives in `tunelab.data.template_style`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tunelab.data.records import DataError, Record

if TYPE_CHECKING:
    from tunelab.models.tokenizer import Segment, Tokenizer

SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@dataclass(frozen=True)
class PromptStyle:
    name: str

    def prompt_segments(self, record: Record) -> list[Segment]:
        """The prompt as (text, trusted) segments. By default a style that only defines
        `prompt()` is untrusted text throughout: no special tokens at all."""
        if type(self).prompt is PromptStyle.prompt:
            raise NotImplementedError(f"prompt style {self.name!r} defines no prompt")
        return [(self.prompt(record), False)]

    def prompt(self, record: Record) -> str:
        return "".join(text for text, _ in self.prompt_segments(record))

    def answer_segments(self, answer: str) -> list[Segment]:
        return [(answer, False), (self.answer_suffix, True)]

    def encode_prompt(self, record: Record, tokenizer: Tokenizer) -> list[int]:
        """Token ids of the prompt (special tokens only from the style's own text)."""
        return tokenizer.encode_segments(self.prompt_segments(record))

    def encode_answer(self, answer: str, tokenizer: Tokenizer) -> list[int]:
        """Token ids of an answer and the style's end-of-turn suffix."""
        return tokenizer.encode_segments(self.answer_segments(answer))

    def encode_completion(self, record: Record, answer: str, tokenizer: Tokenizer) -> list[int]:
        """Ids that follow `encode_prompt(record)` when the assistant answers `answer` (DPO)."""
        return self.encode_answer(answer, tokenizer)

    def encode_sft(self, record: Record, tokenizer: Tokenizer) -> tuple[list[int], list[bool]]:
        """(ids, trained): the whole example and, per token, whether it is answer text that SFT
        trains on with `mask_prompt` (here: the final answer; earlier turns are prompt)."""
        prompt = self.encode_prompt(record, tokenizer)
        answer = self.encode_answer(record.output, tokenizer)
        return prompt + answer, [False] * len(prompt) + [True] * len(answer)

    answer_suffix: str = ""
    stop_strings: tuple[str, ...] = ()
    # The end of every prompt that introduces the answer ("\n\n### Response:\n" for Alpaca).
    response_header: str = ""

    def instruction_segments(self, record: Record) -> list[Segment]:
        """The prompt without its response header: what the book's exercise 7.2 masks (its
        `format_input`), and what the DPO notebook's prompt is."""
        seg = list(self.prompt_segments(record))
        text, trusted = seg[-1] if seg else ("", True)
        if not self.response_header or not text.endswith(self.response_header):
            raise ValueError(f"prompt style {self.name!r} has no response header to leave out")
        seg[-1] = (text[: len(text) - len(self.response_header)], trusted)
        return [s for s in seg if s[0]]

    def instruction_text(self, record: Record) -> str:
        return "".join(text for text, _ in self.instruction_segments(record))

    def encode_instruction(self, record: Record, tokenizer: Tokenizer) -> list[int]:
        """Token ids of `instruction_text(record)` (special tokens only from the style's text)."""
        return tokenizer.encode_segments(self.instruction_segments(record))


def _user_text(instruction: str, inp: str) -> str:
    return f"{instruction}\n\n{inp}" if inp.strip() else instruction


@dataclass(frozen=True)
class Alpaca(PromptStyle):
    """The seed's Alpaca format, byte for byte."""

    name: str = "alpaca"
    stop_strings: tuple[str, ...] = ("### Instruction:",)
    response_header: str = "\n\n### Response:\n"

    def prompt_segments(self, record: Record) -> list[Segment]:
        seg: list[Segment] = [
            (record.system, False)
            if record.system
            else (
                "Below is an instruction that describes a task. "
                "Write a response that appropriately completes the request.",
                True,
            )
        ]
        for user, assistant in record.history:
            seg += [("\n\n### Instruction:\n", True), (user, False)]
            seg += [("\n\n### Response:\n", True), (assistant, False)]
        seg += [("\n\n### Instruction:\n", True), (record.instruction, False)]
        if record.input:
            seg += [("\n\n### Input:\n", True), (record.input, False)]
        return seg + [(self.response_header, True)]


@dataclass(frozen=True)
class Phi3(PromptStyle):
    name: str = "phi3"
    answer_suffix: str = "<|end|>"
    stop_strings: tuple[str, ...] = ("<|end|>", "<|user|>")
    response_header: str = "<|assistant|>\n"

    def prompt_segments(self, record: Record) -> list[Segment]:
        seg: list[Segment] = []
        if record.system:
            seg += [("<|system|>\n", True), (record.system, False), ("<|end|>\n", True)]
        for user, assistant in record.history:
            seg += [("<|user|>\n", True), (user, False), ("<|end|>\n<|assistant|>\n", True)]
            seg += [(assistant, False), ("<|end|>\n", True)]
        user = _user_text(record.instruction, record.input)
        return seg + [("<|user|>\n", True), (user, False), ("<|end|>\n<|assistant|>\n", True)]


@dataclass(frozen=True)
class Phi3Book(PromptStyle):
    """The book's exercise 7.1 "Phi-3" format, byte for byte: `<|user|>\n` instruction, `\n`
    input, then `\n<|assistant|>:\n` (with a colon) and the answer; no `<|end|>` markers and no
    system prompt. Phi-3's own template is the `phi3` style; this one reproduces the exercise."""

    name: str = "phi3_book"
    stop_strings: tuple[str, ...] = ("<|user|>",)
    response_header: str = "\n<|assistant|>:\n"

    def prompt(self, record: Record) -> str:
        if record.system or record.history:
            raise DataError(
                "prompt style phi3_book (the book's exercise format) has no system prompt or "
                "earlier turns; use prompt style phi3 for such records"
            )
        text = f"<|user|>\n{record.instruction}"
        if record.input:
            text += f"\n{record.input}"
        return text + self.response_header


@dataclass(frozen=True)
class ChatML(PromptStyle):
    name: str = "chatml"
    default_system: str | None = None
    answer_suffix: str = "<|im_end|>"
    stop_strings: tuple[str, ...] = ("<|im_end|>", "<|im_start|>")
    response_header: str = "<|im_start|>assistant\n"

    def prompt_segments(self, record: Record) -> list[Segment]:
        seg: list[Segment] = []
        if record.system or self.default_system:
            system = (record.system, False) if record.system else (self.default_system, True)
            seg += [("<|im_start|>system\n", True), system, ("<|im_end|>\n", True)]
        for user, assistant in record.history:
            seg += [("<|im_start|>user\n", True), (user, False)]
            seg += [("<|im_end|>\n<|im_start|>assistant\n", True), (assistant, False)]
            seg += [("<|im_end|>\n", True)]
        user = _user_text(record.instruction, record.input)
        seg += [("<|im_start|>user\n", True), (user, False)]
        return seg + [("<|im_end|>\n<|im_start|>assistant\n", True)]


STYLES: dict[str, PromptStyle] = {
    "alpaca": Alpaca(),
    "phi3": Phi3(),
    "phi3_book": Phi3Book(),
    "chatml": ChatML(),
    # SmolLM2-Instruct's own chat template: ChatML with its default system line.
    "smollm2": ChatML(name="smollm2", default_system=SMOLLM2_SYSTEM),
}


MODEL_STYLE = "model"


def get_style(name: str | PromptStyle, tokenizer: Tokenizer | None = None) -> PromptStyle:
    """A style by name; `model` renders the tokenizer's own chat template (so needs it)."""
    if isinstance(name, PromptStyle):
        return name
    if name == MODEL_STYLE:
        from tunelab.data.template_style import ModelTemplate

        return ModelTemplate.for_tokenizer(tokenizer)
    if name not in STYLES:
        known = ", ".join(sorted([*STYLES, MODEL_STYLE]))
        raise KeyError(f"unknown prompt style {name!r}; available: {known}")
    return STYLES[name]
