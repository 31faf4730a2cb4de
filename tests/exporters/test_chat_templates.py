"""Chat templates written by export render exactly tunelab's prompt styles.

Jinja (HF tokenizer_config.json, GGUF tokenizer.chat_template) is rendered with and without
transformers' `trim_blocks`/`lstrip_blocks`; the Ollama Go template by the Go-template-subset
renderer in `gotemplate.py`, with Ollama's request handling (Modelfile SYSTEM, collation).
"""

from __future__ import annotations

import jinja2
import jinja2.sandbox
import pytest

from tests.exporters.gotemplate import ollama_prompt, parse_modelfile, render
from tunelab.data.prompts import STYLES, get_style
from tunelab.data.records import Record
from tunelab.exporters.chat_templates import chat_templates, record_messages
from tunelab.exporters.ollama import modelfile
from tunelab.models.tokenizer import gpt2_tokenizer

RECORDS = [
    Record(instruction="Name a primary colour."),
    Record(instruction="Translate to French.", input="good morning"),
    Record(instruction="Add 2 and 3.", input="   "),
    Record(instruction="And now?", system="You are terse.", history=[("Hi", "Hello!")]),
    Record(
        instruction="Third 'quoted' {{ .Braces }} turn",
        input="with input",
        history=[("First\nline", "One"), ("Second", "Two")],
    ),
]
STYLE_NAMES = ["alpaca", "chatml", "phi3", "smollm2"]


def _jinja(template: str, messages, trim: bool) -> str:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=trim, lstrip_blocks=trim)
    return env.from_string(template).render(messages=messages, add_generation_prompt=True)


@pytest.mark.parametrize("style_name", STYLE_NAMES)
def test_jinja_template_renders_the_prompt_style(style_name) -> None:
    style = get_style(style_name)
    templates = chat_templates(style)
    for record in RECORDS:
        messages = record_messages(record, style)
        expected = style.prompt(record)
        assert _jinja(templates.jinja, messages, trim=True) == expected
        assert _jinja(templates.jinja, messages, trim=False) == expected


@pytest.mark.parametrize("style_name", STYLE_NAMES)
def test_ollama_template_renders_the_prompt_style(style_name) -> None:
    style = get_style(style_name)
    templates = chat_templates(style)
    parsed = parse_modelfile(modelfile(style, templates, gpt2_tokenizer()))
    assert parsed["FROM"] == "./model.gguf"
    assert parsed["TEMPLATE"] == templates.go
    assert parsed.get("SYSTEM") == templates.system
    for record in RECORDS:
        messages = record_messages(record, style)
        assert ollama_prompt(parsed["TEMPLATE"], parsed.get("SYSTEM"), messages) == style.prompt(
            record
        )


def test_modelfile_stops_and_system_per_style() -> None:
    tok = gpt2_tokenizer()
    smol = parse_modelfile(
        modelfile(get_style("smollm2"), chat_templates(get_style("smollm2")), tok)
    )
    assert smol["SYSTEM"] == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert smol["PARAMETER"] == [
        ("stop", "<|im_end|>"),
        ("stop", "<|im_start|>"),
        ("stop", "<|endoftext|>"),
    ]
    alpaca = parse_modelfile(
        modelfile(get_style("alpaca"), chat_templates(get_style("alpaca")), tok)
    )
    assert alpaca["SYSTEM"].startswith("Below is an instruction")
    assert ("stop", "### Instruction:") in alpaca["PARAMETER"]
    assert "SYSTEM" not in parse_modelfile(
        modelfile(get_style("chatml"), chat_templates(get_style("chatml")), tok)
    )


def test_renderer_subset_basics() -> None:
    data = {"System": "", "Messages": [{"Role": "user", "Content": "x"}]}
    assert render('{{ if .System }}S{{ else if eq .System "" }}E{{ end }}', {"System": ""}) == "E"
    assert render("{{- range .Messages }} {{ .Role }}:{{ .Content }} {{- end }}", data) == " user:x"
    assert render('{{ if ne .System "" }}a{{ else }}b{{ end }}', data) == "b"


def test_every_registered_style_is_translated_or_refused_in_one_line() -> None:
    for name, style in STYLES.items():
        try:
            chat_templates(style)
        except ValueError as e:
            assert "no chat-template translation" in str(e) and name in str(e)
            assert "\n" not in str(e)
