"""A model's own chat template (Jinja), rendered as transformers' `apply_chat_template` renders it.

Same environment: a sandboxed, immutable jinja2 environment with `trim_blocks` and
`lstrip_blocks`, the loop-controls extension (`break`/`continue`), a `{% generation %}` block
(rendered as its body), the `tojson` filter without HTML escaping (with `indent`, `separators`,
`sort_keys`), and the globals `raise_exception`, `strftime_now`, `dict` and `namespace`. The
template sees `messages`, `add_generation_prompt`, `tools`/`documents` (None) and the special-token
strings (`bos_token`, `eos_token`, ...).

`render_segments` tells template text from message text: it renders the messages with each
content replaced by a unique marker, and checks that putting the contents back gives exactly the
real rendering. Template text is then trusted (it may hold special tokens) and message text is not
(see `Tokenizer.encode_segments`). A template that changes message text in ways this cannot follow
(other than `trim`) is refused for messages that contain special-token text.
"""

from __future__ import annotations

import json
import re
import secrets
from datetime import datetime
from functools import cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tunelab.models.tokenizer import Segment

Message = dict[str, str]


class ChatTemplateError(ValueError):
    """A template raised (`raise_exception`) or could not be rendered."""


class _Generation(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: rendered as its body (transformers marks the
    assistant text with it; tunelab finds assistant turns by rendering with and without them)."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _Namespace(jinja2.utils.Namespace):
    """`namespace(...)` that refuses underscore names, as transformers' does."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 (jinja's signature trick)
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} is not allowed")


@cache
def compile_template(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = dict
    env.globals["namespace"] = _Namespace
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ChatTemplateError(f"chat template line {e.lineno}: {e.message}") from None


def render(
    template: str,
    messages: list[Message],
    add_generation_prompt: bool = False,
    tokens: dict[str, str] | None = None,
) -> str:
    """The text transformers' `apply_chat_template(..., tokenize=False)` gives."""
    try:
        return compile_template(template).render(
            messages=messages,
            tools=None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **(tokens or {}),
        )
    except jinja2.exceptions.TemplateError as e:
        raise ChatTemplateError(f"chat template: {e.message or e}") from None


def render_segments(
    template: str,
    messages: list[Message],
    add_generation_prompt: bool = False,
    tokens: dict[str, str] | None = None,
    special_tokens: dict[str, int] | None = None,
) -> list[Segment]:
    """The rendering as (text, trusted) segments: message contents untrusted, the rest trusted.

    The joined segments always equal `render(...)`.
    """
    real = render(template, messages, add_generation_prompt, tokens)
    nonce = secrets.token_hex(8)
    marks = [f"\ue000{nonce}:{k}\ue001" for k in range(len(messages))]
    marked = [{**m, "content": marks[k]} for k, m in enumerate(messages)]
    try:
        text = render(template, marked, add_generation_prompt, tokens)
    except ChatTemplateError:
        text = None
    if text is not None:
        for strip in (False, True):
            segments = _fill(text, marks, messages, nonce, strip)
            if segments is not None and "".join(t for t, _ in segments) == real:
                return segments
    names = [n for n in (special_tokens or {}) if any(n in m["content"] for m in messages)]
    if names:
        raise ChatTemplateError(
            f"chat template changes message text in a way tunelab cannot follow, and a message "
            f"contains the special token {names[0]!r}; refusing to encode it"
        )
    return [(real, True)]


def _fill(
    text: str, marks: list[str], messages: list[Message], nonce: str, strip: bool
) -> list[Segment] | None:
    pattern = re.compile(f"\ue000{nonce}:(\\d+)\ue001")
    segments: list[Segment] = []
    last = 0
    for m in pattern.finditer(text):
        if m.start() > last:
            segments.append((text[last : m.start()], True))
        content = messages[int(m.group(1))]["content"]
        segments.append((content.strip() if strip else content, False))
        last = m.end()
    if last < len(text):
        segments.append((text[last:], True))
    return segments
