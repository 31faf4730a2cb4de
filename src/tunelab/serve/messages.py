"""Chat messages (OpenAI or Ollama shape) -> a tunelab Record (system, history, last user turn)."""

from __future__ import annotations

from typing import Any

from tunelab.data.records import Record
from tunelab.serve.validation import RequestError, empty, fail, string, text

# Message keys that cannot change the answer, or only at their empty value.
_IGNORED = {"name": string, "tool_name": string}
_EMPTY_ONLY = ("images", "tool_calls", "thinking", "refusal", "audio", "function_call")


def _content_text(content: Any, where: str) -> str:
    if content is None:
        return ""  # the ollama client drops empty contents; OpenAI allows null
    if isinstance(content, str):
        return text(content, f"{where}.content")
    if isinstance(content, list):  # OpenAI content parts
        texts = []
        for j, part in enumerate(content):
            name = f"{where}.content[{j}]"
            if not isinstance(part, dict) or part.get("type") != "text":
                raise fail(name, "only text parts are supported")
            texts.append(text(string(part.get("text", ""), f"{name}.text"), f"{name}.text"))
        return "".join(texts)
    raise fail(f"{where}.content", f"expected a string, got {type(content).__name__}")


def _check_message(m: Any, where: str) -> tuple[str, str]:
    if not isinstance(m, dict) or "role" not in m:
        raise fail(where, "expected an object with 'role' and 'content'")
    for key, value in m.items():
        if key in ("role", "content") or value is None:
            continue
        if key in _IGNORED:
            _IGNORED[key](value, f"{where}.{key}")
        elif key in _EMPTY_ONLY:
            empty(value, f"{where}.{key}")
        else:
            raise fail(f"{where}.{key}", "unknown field (not supported by tunelab)")
    role = m["role"]
    if not isinstance(role, str):
        raise fail(f"{where}.role", f"expected a string, got {type(role).__name__}")
    return role, _content_text(m.get("content"), where)


def messages_to_record(messages: Any) -> Record:
    """Chat messages -> Record (system, history of (user, assistant) turns, last user message)."""
    if not isinstance(messages, list) or not messages:
        raise RequestError(
            "messages: expected a non-empty list of {role, content} objects", param="messages"
        )
    system_parts: list[str] = []
    turns: list[tuple[str, str]] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        role, content = _check_message(m, where)
        if role in ("system", "developer"):
            if turns:
                raise fail(where, "system messages must come before the conversation")
            system_parts.append(content)
        elif role in ("user", "assistant"):
            expected = "user" if not turns or turns[-1][0] == "assistant" else "assistant"
            if role != expected:
                raise fail(where, f"expected a {expected} message (turns alternate)")
            turns.append((role, content))
        else:
            raise fail(where, f"unsupported role {role!r}; expected system/user/assistant")
    if not turns or turns[-1][0] != "user":
        raise RequestError("messages: the last message must come from the user", param="messages")
    history = [(turns[k][1], turns[k + 1][1]) for k in range(0, len(turns) - 1, 2)]
    return Record(
        instruction=turns[-1][1], system="\n\n".join(system_parts) or None, history=history
    )
