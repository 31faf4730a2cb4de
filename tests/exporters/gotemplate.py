"""A small renderer for the subset of Go's text/template that Ollama templates use, and Ollama's
handling of a chat request around it (test helper).

Supported: text, `{{ .Field }}` / `{{ $.Field }}` / `{{ "literal" }}`, `if` / `else if` /
`else` / `end`, `range .List`, `eq` / `ne`, and the `{{- ` / ` -}}` whitespace trims. Truth is
Go's: empty strings and lists and nil are false. Anything else raises, so a template that leaves
the subset fails the test instead of rendering wrongly.
"""

from __future__ import annotations

import json
import re
from typing import Any

_ACTION = re.compile(r"\{\{(- )?\s*(.*?)\s*( -)?\}\}", re.S)
_ARG = re.compile(r'"(?:[^"\\]|\\.)*"|\S+')


def _lex(src: str) -> list[list[Any]]:
    pieces: list[list[Any]] = []
    pos = 0
    for m in _ACTION.finditer(src):
        text = src[pos : m.start()]
        pieces.append(["text", text.rstrip() if m.group(1) else text])
        pieces.append(["action", m.group(2), bool(m.group(3))])
        pos = m.end()
    pieces.append(["text", src[pos:]])
    for i, p in enumerate(pieces):
        if p[0] == "action" and p[2]:
            pieces[i + 1][1] = pieces[i + 1][1].lstrip()
    return pieces


def _build(pieces: list[list[Any]], i: int) -> tuple[list[Any], int]:
    nodes: list[Any] = []
    while i < len(pieces):
        kind, body = pieces[i][0], pieces[i][1]
        if kind == "text":
            nodes.append(("text", body))
            i += 1
            continue
        word = body.split()[0]
        if word in ("end", "else"):
            return nodes, i
        if word == "if":
            branches = []
            cond = body[3:]
            while True:
                block, i = _build(pieces, i + 1)
                branches.append((cond, block))
                action = pieces[i][1]
                if action == "end":
                    i += 1
                    break
                if action.startswith("else if "):
                    cond = action[len("else if ") :]
                elif action == "else":
                    cond = None
                else:
                    raise ValueError(f"unexpected {action!r}")
            nodes.append(("if", branches))
        elif word == "range":
            block, i = _build(pieces, i + 1)
            if pieces[i][1] != "end":
                raise ValueError("range ... else is outside the subset")
            nodes.append(("range", body[len("range ") :], block))
            i += 1
        else:
            nodes.append(("expr", body))
            i += 1
    return nodes, i


def _value(token: str, dot: Any, root: Any) -> Any:
    if token.startswith('"'):
        return json.loads(token)
    if token == ".":
        return dot
    if token.startswith("$."):
        obj, path = root, token[2:]
    elif token.startswith("."):
        obj, path = dot, token[1:]
    else:
        raise ValueError(f"{token!r} is outside the subset")
    for part in path.split("."):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj


def _eval(expr: str, dot: Any, root: Any) -> Any:
    args = _ARG.findall(expr)
    if args[0] in ("eq", "ne"):
        a, b = (_value(t, dot, root) for t in args[1:3])
        return (a == b) if args[0] == "eq" else (a != b)
    if len(args) != 1:
        raise ValueError(f"{expr!r} is outside the subset")
    return _value(args[0], dot, root)


def _run(nodes: list[Any], dot: Any, root: Any, out: list[str]) -> None:
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "expr":
            out.append(str(_eval(node[1], dot, root)))
        elif node[0] == "if":
            for cond, block in node[1]:
                if cond is None or _eval(cond, dot, root):
                    _run(block, dot, root, out)
                    break
        else:
            for item in _eval(node[1], dot, root) or []:
                _run(node[2], item, root, out)


def render(template: str, data: dict[str, Any]) -> str:
    nodes, i = _build(_lex(template), 0)
    out: list[str] = []
    _run(nodes, data, data, out)
    return "".join(out)


def parse_modelfile(text: str) -> dict[str, Any]:
    """FROM, TEMPLATE/SYSTEM (triple-quoted: kept verbatim, as Ollama's parser does) and
    PARAMETER lines."""
    out: dict[str, Any] = {"PARAMETER": []}
    for m in re.finditer(r'^(TEMPLATE|SYSTEM) """(.*?)"""$', text, re.S | re.M):
        out[m.group(1)] = m.group(2)
    for m in re.finditer(r'^PARAMETER (\w+) "([^"\n]*)"$', text, re.M):
        out["PARAMETER"].append((m.group(1), m.group(2)))
    out["FROM"] = re.search(r"^FROM (\S+)$", text, re.M).group(1)
    return out


def ollama_prompt(template: str, system: str | None, messages: list[dict[str, str]]) -> str:
    """What Ollama's /api/chat renders: the Modelfile SYSTEM first when the request has no system
    message; consecutive messages of one role joined by a blank line; `.System` = the system
    messages joined (ollama/template/template.go: collate, Execute)."""
    msgs = [dict(m) for m in messages]
    if system and (not msgs or msgs[0]["role"] != "system"):
        msgs.insert(0, {"role": "system", "content": system})
    collated: list[dict[str, str]] = []
    for m in msgs:
        if collated and collated[-1]["role"] == m["role"]:
            collated[-1]["content"] += "\n\n" + m["content"]
        else:
            collated.append({"role": m["role"], "content": m["content"]})
    joined = "\n\n".join(m["content"] for m in msgs if m["role"] == "system")
    data = {
        "System": joined,
        "Messages": [{"Role": m["role"], "Content": m["content"]} for m in collated],
    }
    return render(template, data)
