"""Ollama: the GGUF plus a Modelfile (`ollama create my-model -f Modelfile`).

The Modelfile names the GGUF beside it (`FROM ./model.gguf`), carries the prompt style as a Go
TEMPLATE, the style's default system text as SYSTEM, and a `PARAMETER stop` for each end-of-turn
string (the style's stop strings and the tokenizer's end-of-turn tokens). Values are written in
triple quotes, which Ollama's Modelfile parser keeps verbatim (newlines included).
"""

from __future__ import annotations

from pathlib import Path

from tunelab.data.prompts import PromptStyle
from tunelab.exporters.chat_templates import ChatTemplates
from tunelab.models.tokenizer import Tokenizer

GGUF_NAME = "model.gguf"


def stop_strings(style: PromptStyle, tokenizer: Tokenizer) -> list[str]:
    enc = tokenizer.encoding  # tiktoken: _special_tokens; `tokenizers` pipelines: special_tokens
    specials = getattr(enc, "_special_tokens", None) or getattr(enc, "special_tokens", {})
    names = {i: s for s, i in specials.items()}
    tokens = [names[i] for i in tokenizer.stop_ids if i in names]
    return list(dict.fromkeys([*style.stop_strings, *tokens]))


def _quoted(key: str, value: str) -> str:
    if '"""' in value:
        raise ValueError(f'ollama: the {key} text contains """, which a Modelfile cannot quote')
    return f'{key} """{value}"""'


def modelfile(style: PromptStyle, templates: ChatTemplates, tokenizer: Tokenizer) -> str:
    if templates.go is None:
        raise ValueError(
            f"format=ollama: prompt style {style.name!r} (the model's own Jinja template) has no "
            "Go-template translation; pass prompt_style=alpaca|chatml|phi3|smollm2"
        )
    lines = [
        f"# Prompt style {style.name!r}, exported by tunelab. Then: ollama create my-model -f Modelfile",
        f"FROM ./{GGUF_NAME}",
        _quoted("TEMPLATE", templates.go),
    ]
    if templates.system:
        lines.append(_quoted("SYSTEM", templates.system))
    for stop in stop_strings(style, tokenizer):
        if '"' in stop or "\n" in stop:
            raise ValueError(f"ollama: stop string {stop!r} cannot be written as a PARAMETER")
        lines.append(f'PARAMETER stop "{stop}"')
    return "\n".join(lines) + "\n"


def write_modelfile(
    folder: Path, style: PromptStyle, templates: ChatTemplates, tokenizer: Tokenizer
) -> None:
    (folder / "Modelfile").write_text(modelfile(style, templates, tokenizer), encoding="utf-8")
