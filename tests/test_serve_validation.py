"""tunelab.serve request validation (issue 15 part 8): every field of both protocols is checked
against the API's range; a bad value gets 400 naming the field, never a 500 and never a silent
replacement. A fuzz over the request schema: in process over every field x a pool of hostile
values and random combinations, then over HTTP for a sample of each field's outcomes."""

from __future__ import annotations

import json
import math
import random

import httpx
import ollama
import openai
import pytest
import torch

from tunelab.models import load_pretrained
from tunelab.models.generation import sample_next
from tunelab.serve import (
    BackgroundServer,
    RequestError,
    ServeSettings,
    create_app,
    ollama_routes,
    openai_routes,
)

MESSAGES = [{"role": "user", "content": "Hi"}]
CAP = 1
POOL = [
    True, False, 0, 1, -1, 2, 3, 21, 0.0, 0.5, 1.5, -0.5, 2.5, 1e-300, 5e-324, 1e308,
    math.nan, math.inf, -math.inf, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**70,
    "", "x", "yes", "\ud800", [], [""], ["x"], ["x"] * 5, [1], {}, {"a": 1}, {"type": "text"},
    {"include_usage": "yes"}, {"include_usage": True}, None,
]  # fmt: skip
MESSAGE_POOL = [
    [{"role": "user"}],
    [{"role": "user", "content": None}],
    [{"role": 1, "content": "x"}],
    [{"role": "user", "content": {"a": 1}}],
    [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
    [{"role": "user", "content": [{"type": "text", "text": 5}]}],
    [{"role": "user", "content": [{"type": "text", "text": "\ud800"}]}],
    [{"role": "user", "content": "\ud800"}],
    [{"role": "user", "content": "x", "images": ["aGk="]}],
    [{"role": "user", "content": "x", "name": "bob"}],
    [{"role": "user", "content": "x", "foo": 1}],
    [{"role": "system", "content": "s"}, {"role": "user", "content": "x"}],
    [{"role": "user", "content": "x"}, {"role": "system", "content": "s"}],
    [{"role": "user", "content": "x " * 400}],
    ["x"],
    [[]],
]


def _bodies(protocol: str):
    """(field name as reported, request body) for every field x every pool value."""
    if protocol == "openai":
        base, fields, options = {"model": "tiny", "messages": MESSAGES}, openai_routes.FIELDS, {}
    else:
        base = {"model": "tiny", "messages": MESSAGES, "stream": False}
        fields, options = ollama_routes.FIELDS, ollama_routes.OPTIONS
    for name in fields:
        values = MESSAGE_POOL + POOL if name == "messages" else POOL
        for value in values:
            extra = {"stream": True} if name == "stream_options" else {}
            yield name, {**base, **extra, name: value}
    for name in options:
        for value in POOL:
            yield f"options.{name}", {**base, "options": {name: value}}
    yield "unknown", {**base, "temprature": 0.5}
    if options:
        yield "options.unknown", {**base, "options": {"temprature": 0.5}}


def _parse(chat_model, protocol: str, body: dict):
    """In process, as the route does: GenParams and prompt ids, or the RequestError."""
    module = openai_routes if protocol == "openai" else ollama_routes
    try:
        params = module.parse_request(body, 0.0, CAP)
        chat_model.prompt(body.get("messages"), params)
    except RequestError as e:
        return e
    return params


def _check_params(p) -> None:
    """Accepted values are within what the sampler and torch take."""
    assert math.isfinite(p.temperature) and p.temperature >= 0
    assert p.top_p is None or 0 <= p.top_p <= 1
    assert p.top_k is None or p.top_k >= 1
    assert p.seed is None or -(2**63) <= p.seed < 2**63
    assert 1 <= p.max_new_tokens <= CAP
    assert p.num_ctx is None or p.num_ctx >= 1
    assert all(isinstance(s, str) and s for s in p.stop)


@pytest.fixture(scope="module")
def served():
    loaded = load_pretrained("tiny-gpt2", seed=1)
    app = create_app(loaded, ServeSettings(model_name="tiny", max_new_tokens=CAP))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one-token answers: thread start-up would dominate
    with BackgroundServer(app) as server:
        yield server, app.state.chat_model
    torch.set_num_threads(threads)


@pytest.mark.parametrize("protocol", ["openai", "ollama"])
def test_schema_fuzz_in_process(served, protocol):
    _, chat_model = served
    cases = list(_bodies(protocol))
    rng = random.Random(0)
    for _ in range(1500):  # random combinations of several fields
        picked = rng.sample(cases, rng.randint(2, 4))
        body: dict = {}
        for _, b in picked:
            merged = {**body, **b}
            if isinstance(body.get("options"), dict) and isinstance(b.get("options"), dict):
                merged["options"] = {**body["options"], **b["options"]}
            body = merged
        cases.append(("any", body))
    outcomes = {"accepted": 0, "refused": 0}
    for name, body in cases:
        result = _parse(chat_model, protocol, body)
        if isinstance(result, RequestError):
            outcomes["refused"] += 1
            assert result.status == 400, (name, body, result)
            message = str(result)
            if name not in ("any", "unknown", "options.unknown"):
                assert message.startswith(name) or name == "messages" and "messages" in message
        else:
            outcomes["accepted"] += 1
            _check_params(result)
    assert outcomes["accepted"] > 100 and outcomes["refused"] > 1000, outcomes


def test_extreme_accepted_values_sample_without_error():
    logits = torch.randn(2, 1000, generator=torch.Generator().manual_seed(0)) * 30
    for temperature in (5e-324, 1e-300, 2.0, 1e308):
        for top_k in (None, 1, 2**63 - 1):
            for top_p in (None, 5e-324, 1.0):
                for seed in (-(2**63), 2**63 - 1):
                    gen = torch.Generator().manual_seed(seed)
                    tok = sample_next(logits, temperature, top_k, top_p, gen)
                    assert tok.shape == (2,) and bool(((tok >= 0) & (tok < 1000)).all())


@pytest.mark.parametrize("protocol", ["openai", "ollama"])
def test_schema_fuzz_over_http_matches_in_process(served, protocol):
    """Per field: up to 2 refused values get the same 400 over HTTP, one accepted value 200."""
    server, chat_model = served
    path = "/v1/chat/completions" if protocol == "openai" else "/api/chat"
    chosen: dict[str, list] = {}
    for name, body in _bodies(protocol):
        result = _parse(chat_model, protocol, body)
        kind = "refused" if isinstance(result, RequestError) else "accepted"
        picks = chosen.setdefault(f"{name}/{kind}", [])
        if len(picks) < (2 if kind == "refused" else 1):
            picks.append((body, result))
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for key, picks in chosen.items():
            for body, result in picks:
                resp = client.post(path, content=json.dumps(body).encode())
                if isinstance(result, RequestError):
                    assert resp.status_code == 400, (key, body, resp.text)
                    error = resp.json()["error"]
                    message = error if protocol == "ollama" else error["message"]
                    assert message == str(result).encode("utf-8", "backslashreplace").decode()
                else:
                    assert resp.status_code == 200, (key, body, resp.text)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": -1}, "temperature: must be a finite number between 0 and 2, got -1"),
        ({"temperature": 3}, "temperature: must be a finite number between 0 and 2, got 3"),
        ({"top_p": 2}, "top_p: must be a finite number between 0 and 1, got 2"),
        ({"seed": 2**70}, "seed: must be an integer between -9223372036854775808 and"),
        ({"max_tokens": 0}, "max_tokens: must be >= 1, got 0"),
        ({"n": 2}, "n: not supported by tunelab (only 1): one choice per request; got 2"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop: at most 4 stop sequences, got 5"),
        ({"presence_penalty": 0.5}, "presence_penalty: not supported by tunelab (only 0.0)"),
        ({"logprobs": True}, "logprobs: not supported by tunelab (only False)"),
        ({"response_format": {"type": "json_object"}}, "response_format.type: expected one of"),
        ({"extra_body": {"top_k": -5}}, "top_k: must be >= 0, got -5"),
        ({"extra_body": {"temprature": 0.5}}, "temprature: unknown field"),
        ({"stream": True, "stream_options": "yes"}, "stream_options: expected a JSON object"),
        ({"stream_options": {"include_usage": True}}, "stream_options: only allowed when stream"),
    ],
)
def test_openai_client_gets_400_naming_the_field(served, kwargs, message):
    server, _ = served
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=MESSAGES, **kwargs)
    assert info.value.status_code == 400
    assert info.value.body["message"].startswith(message)
    assert info.value.body["param"] == message.split(":")[0]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"temperature": -1}, "options.temperature: must be a finite number >= 0, got -1"),
        ({"top_p": 2}, "options.top_p: must be a finite number between 0 and 1, got 2"),
        ({"top_k": -5}, "options.top_k: must be >= 0, got -5"),
        ({"seed": 2**70}, "options.seed: must be an integer between"),
        ({"num_predict": 0}, "options.num_predict: must be >= 1, or -1 (no limit) or -2"),
        ({"num_ctx": 0}, "options.num_ctx: must be >= 1, got 0"),
        ({"repeat_penalty": 1.1}, "options.repeat_penalty: not supported by tunelab (only 1.0)"),
        ({"mirostat": 2}, "options.mirostat: not supported by tunelab (only 0)"),
        ({"temprature": 0.5}, "options.temprature: unknown field"),
        ({"stop": [""]}, "options.stop[0]: must not be empty"),
    ],
)
def test_ollama_client_gets_400_naming_the_option(served, options, message):
    server, _ = served
    with pytest.raises(ollama.ResponseError) as info:
        ollama.Client(host=server.url).chat("tiny", MESSAGES, options=options)
    assert info.value.status_code == 400 and info.value.error.startswith(message)
    with pytest.raises(ollama.ResponseError, match="format: not supported by tunelab"):
        ollama.Client(host=server.url).chat("tiny", MESSAGES, format="json")
    with pytest.raises(ollama.ResponseError, match="think: not supported by tunelab"):
        ollama.Client(host=server.url).chat("tiny", MESSAGES, think=True)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"messages": [], "seed": 1' + b"0" * 5000 + b"}", "the request body is not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "the request body is not valid JSON: nested too deeply"),
        (
            b'{"messages": [{"role": "user", "content": "\\ud800"}]}',
            "messages[0].content: not valid",
        ),
        (b'{"\\ud800": 1}', "\\ud800: unknown field"),
        (b"\xff\xfe", "the request body is not valid JSON"),
        (b"", "the request body is not valid JSON"),
        (b"[1]", "the request body must be a JSON object"),
    ],
)
def test_hostile_json_gets_400(served, raw, message):
    server, _ = served
    for path in ("/v1/chat/completions", "/api/chat"):
        resp = httpx.post(f"{server.url}{path}", content=raw, timeout=30)
        assert resp.status_code == 400, resp.text
        error = resp.json()["error"]
        assert (error if path == "/api/chat" else error["message"]).startswith(message)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_non_finite_numbers_name_the_field(served, literal):
    server, _ = served
    raw = b'{"messages": [], "temperature": %s}' % literal
    resp = httpx.post(f"{server.url}/v1/chat/completions", content=raw, timeout=30)
    assert resp.status_code == 400
    assert resp.json()["error"]["message"].startswith("temperature: must be a finite number")
    raw = b'{"messages": [], "options": {"temperature": %s}}' % literal
    resp = httpx.post(f"{server.url}/api/chat", content=raw, timeout=30)
    assert resp.status_code == 400
    assert resp.json()["error"].startswith("options.temperature: must be a finite number")


def test_lone_surrogate_stop_string_names_the_field(served):
    server, _ = served
    raw = b'{"messages": [], "stop": ["a", "\\udfff"]}'
    resp = httpx.post(f"{server.url}/v1/chat/completions", content=raw, timeout=30)
    message = resp.json()["error"]["message"]
    assert resp.status_code == 400 and message.startswith("stop[1]: not valid text (a lone")
    raw = b'{"messages": [], "options": {"stop": "\\udfff"}}'
    resp = httpx.post(f"{server.url}/api/chat", content=raw, timeout=30)
    assert resp.status_code == 400 and resp.json()["error"].startswith("options.stop: not valid")


def test_edge_values_are_served_not_replaced(served):
    server, chat_model = served
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    greedy = chat_model.chat(MESSAGES, max_new_tokens=CAP).text
    # A tiny temperature samples the argmax (it gave "probability tensor contains nan" before);
    # top_p 0 keeps only the most likely token: both equal greedy decoding.
    for kwargs in ({"temperature": 1e-300, "seed": 2**63 - 1}, {"temperature": 1, "top_p": 0}):
        resp = client.chat.completions.create(model="tiny", messages=MESSAGES, **kwargs)
        assert resp.choices[0].message.content == greedy
    resp = client.chat.completions.create(
        model="tiny", messages=MESSAGES, temperature=2, seed=-(2**63), max_tokens=1
    )
    assert resp.usage.completion_tokens == 1
    seeded = {"temperature": 1.0, "seed": 5}
    a = ollama.Client(host=server.url).chat("tiny", MESSAGES, options=seeded).message.content
    b = chat_model.chat(MESSAGES, max_new_tokens=CAP, **seeded).text
    assert a == b
