"""tunelab's prompt styles as chat templates: Jinja (Hugging Face, GGUF) and Go (Ollama).

A conversation is a list of {"role", "content"} messages: an optional system message first, then
user and assistant turns. Rendered with `add_generation_prompt`, each template gives exactly the
string `PromptStyle.prompt` gives for the record with that system text, that history and that
last user text (`record_messages` builds the messages). The Jinja templates are one line with
no text outside expressions, so they render the same with or without `trim_blocks` /
`lstrip_blocks` (transformers turns both on). The Go templates use `.System` (Ollama joins the
request's system messages, or takes the Modelfile's SYSTEM when there is none) and
`range .Messages`.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.data.prompts import Alpaca, ChatML, Phi3, PromptStyle
from tunelab.data.records import Record

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)


@dataclass(frozen=True)
class ChatTemplates:
    jinja: str
    go: str | None  # None: no Go translation (a model's own Jinja template)
    system: str | None  # the style's default system text (Ollama's SYSTEM); None: none


def _j(text: str) -> str:
    """A Jinja string literal."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return f"'{escaped}'"


_SYSTEM = "(messages[0]['content'] if messages and messages[0]['role'] == 'system' else '')"


def _chatml(style: ChatML) -> ChatTemplates:
    default = style.default_system or ""
    jinja = (
        f"{{%- set system = {_SYSTEM} or {_j(default)} %}}"
        "{%- if system %}{{ '<|im_start|>system\\n' + system + '<|im_end|>\\n' }}{%- endif %}"
        "{%- for message in messages %}{%- if message['role'] != 'system' %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{%- endif %}{%- endfor %}"
        "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
    )
    go = (
        "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
        '{{ range .Messages }}{{ if ne .Role "system" }}<|im_start|>{{ .Role }}\n'
        "{{ .Content }}<|im_end|>\n{{ end }}{{ end }}<|im_start|>assistant\n"
    )
    return ChatTemplates(jinja, go, style.default_system)


def _phi3(style: Phi3) -> ChatTemplates:
    jinja = (
        f"{{%- set system = {_SYSTEM} %}}"
        "{%- if system %}{{ '<|system|>\\n' + system + '<|end|>\\n' }}{%- endif %}"
        "{%- for message in messages %}{%- if message['role'] != 'system' %}"
        "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
        "{%- endif %}{%- endfor %}"
        "{%- if add_generation_prompt %}{{ '<|assistant|>\\n' }}{%- endif %}"
    )
    go = (
        "{{ if .System }}<|system|>\n{{ .System }}<|end|>\n{{ end }}"
        '{{ range .Messages }}{{ if ne .Role "system" }}<|{{ .Role }}|>\n'
        "{{ .Content }}<|end|>\n{{ end }}{{ end }}<|assistant|>\n"
    )
    return ChatTemplates(jinja, go, None)


def _alpaca(style: Alpaca) -> ChatTemplates:
    # The preamble is the default system text: a system message replaces it.
    jinja = (
        f"{{%- set system = {_SYSTEM} or {_j(ALPACA_PREAMBLE)} %}}"
        "{{- system }}"
        "{%- for message in messages %}{%- if message['role'] == 'user' %}"
        "{{ '\\n\\n### Instruction:\\n' + message['content'] + '\\n\\n### Response:\\n' }}"
        "{%- elif message['role'] == 'assistant' %}{{ message['content'] }}"
        "{%- endif %}{%- endfor %}"
    )
    go = (
        f"{{{{ if .System }}}}{{{{ .System }}}}{{{{ else }}}}{ALPACA_PREAMBLE}{{{{ end }}}}"
        '{{ range .Messages }}{{ if eq .Role "user" }}\n\n### Instruction:\n{{ .Content }}'
        '\n\n### Response:\n{{ else if eq .Role "assistant" }}{{ .Content }}{{ end }}{{ end }}'
    )
    return ChatTemplates(jinja, go, ALPACA_PREAMBLE)


_BUILDERS = {Alpaca: _alpaca, Phi3: _phi3, ChatML: _chatml}


def chat_templates(style: PromptStyle) -> ChatTemplates:
    """The Jinja and Go templates of a prompt style (refused for styles not translated yet).

    Prompt style `model` (the checkpoint's own Jinja template) is written as it is; it has no
    Go translation, so an Ollama export of it is refused.
    """
    from tunelab.data.template_style import ModelTemplate

    if isinstance(style, ModelTemplate):
        return ChatTemplates(style.template, None, None)
    builder = _BUILDERS.get(type(style))
    if builder is None:
        raise ValueError(
            f"prompt style {style.name!r} ({type(style).__name__}) has no chat-template "
            f"translation for export; translated: {', '.join(c.__name__ for c in _BUILDERS)}"
        )
    return builder(style)


def record_messages(record: Record, style: PromptStyle) -> list[dict[str, str]]:
    """The chat messages whose rendering equals `style.prompt(record)`.

    The last user text is the instruction and input joined as the style joins them (Alpaca: an
    `### Input:` section; chat styles: a blank line).
    """
    messages = [{"role": "system", "content": record.system}] if record.system else []
    for user, assistant in record.history:
        messages += [
            {"role": "user", "content": user},
            {"role": "assistant", "content": assistant},
        ]
    text = record.instruction
    if record.input and type(style) is Alpaca:
        text += f"\n\n### Input:\n{record.input}"
    elif record.input.strip():
        text += f"\n\n{record.input}"
    return [*messages, {"role": "user", "content": text}]
