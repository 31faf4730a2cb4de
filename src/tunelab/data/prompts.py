"""Prompt styles: how a record becomes the text the model sees.

A style renders the prompt (everything before the answer) and the answer's suffix (what ends an
answer: end-of-turn markers); the tokenizer's end-of-text token is appended by the dataset. The
style's name is saved beside checkpoints so generation later formats prompts the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.data.records import Record

SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@dataclass(frozen=True)
class PromptStyle:
    name: str

    def prompt(self, record: Record) -> str:
        raise NotImplementedError

    answer_suffix: str = ""
    stop_strings: tuple[str, ...] = ()


def _user_text(instruction: str, inp: str) -> str:
    return f"{instruction}\n\n{inp}" if inp.strip() else instruction


@dataclass(frozen=True)
class Alpaca(PromptStyle):
    """The seed's Alpaca format, byte for byte."""

    name: str = "alpaca"
    stop_strings: tuple[str, ...] = ("### Instruction:",)

    def prompt(self, record: Record) -> str:
        text = (
            "Below is an instruction that describes a task. "
            "Write a response that appropriately completes the request."
        )
        if record.system:
            text = record.system
        for user, assistant in record.history:
            text += f"\n\n### Instruction:\n{user}\n\n### Response:\n{assistant}"
        text += f"\n\n### Instruction:\n{record.instruction}"
        if record.input:
            text += f"\n\n### Input:\n{record.input}"
        return text + "\n\n### Response:\n"


@dataclass(frozen=True)
class Phi3(PromptStyle):
    name: str = "phi3"
    answer_suffix: str = "<|end|>"
    stop_strings: tuple[str, ...] = ("<|end|>", "<|user|>")

    def prompt(self, record: Record) -> str:
        text = f"<|system|>\n{record.system}<|end|>\n" if record.system else ""
        for user, assistant in record.history:
            text += f"<|user|>\n{user}<|end|>\n<|assistant|>\n{assistant}<|end|>\n"
        return (
            text
            + f"<|user|>\n{_user_text(record.instruction, record.input)}<|end|>\n<|assistant|>\n"
        )


@dataclass(frozen=True)
class ChatML(PromptStyle):
    name: str = "chatml"
    default_system: str | None = None
    answer_suffix: str = "<|im_end|>"
    stop_strings: tuple[str, ...] = ("<|im_end|>", "<|im_start|>")

    def prompt(self, record: Record) -> str:
        system = record.system or self.default_system
        text = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
        for user, assistant in record.history:
            text += f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{assistant}<|im_end|>\n"
        return text + (
            f"<|im_start|>user\n{_user_text(record.instruction, record.input)}<|im_end|>\n"
            "<|im_start|>assistant\n"
        )


STYLES: dict[str, PromptStyle] = {
    "alpaca": Alpaca(),
    "phi3": Phi3(),
    "chatml": ChatML(),
    # SmolLM2-Instruct's own chat template: ChatML with its default system line.
    "smollm2": ChatML(name="smollm2", default_system=SMOLLM2_SYSTEM),
}


def get_style(name: str) -> PromptStyle:
    if name not in STYLES:
        raise KeyError(f"unknown prompt style {name!r}; available: {', '.join(sorted(STYLES))}")
    return STYLES[name]
