"""OpenAI-compatible routes: /v1/models and /v1/chat/completions (JSON, or server-sent events
streamed token by token)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response, StreamingResponse

from tunelab.serve.app import (
    ClientGone,
    ServeContext,
    add_route,
    context,
    gone,
    openai_error,
    read_json,
)
from tunelab.serve.chat import Completion, Prompt
from tunelab.serve.streaming import watched_generation
from tunelab.serve.validation import (
    GenParams,
    RequestError,
    anything,
    boolean,
    empty,
    fail,
    integer,
    neutral,
    number,
    obj,
    one_of,
    parse_fields,
    stops,
    string,
)


def metadata(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise fail(name, "expected an object of strings")
    return value


FIELDS = {
    "model": string,  # one model per server: the name is not checked
    "messages": anything,  # checked with the prompt
    "temperature": number(0, 2),
    "top_p": number(0, 1),
    "top_k": integer(0),  # not OpenAI's, but vLLM's and llama.cpp's; 0: off
    "seed": integer(),
    "max_tokens": integer(1),
    "max_completion_tokens": integer(1),
    "n": neutral(integer(1), 1, why=": one choice per request"),
    "stop": stops(max_items=4),
    "stream": boolean,
    "stream_options": obj({"include_usage": boolean, "include_obfuscation": boolean}),
    "frequency_penalty": neutral(number(-2, 2), 0.0),
    "presence_penalty": neutral(number(-2, 2), 0.0),
    "logit_bias": empty,
    "logprobs": neutral(boolean, False),
    "top_logprobs": neutral(integer(0, 20), 0),
    "response_format": obj({"type": one_of("text")}),
    "tools": empty,
    "tool_choice": one_of("none", "auto"),  # with no tools both mean: answer in text
    "parallel_tool_calls": boolean,
    "functions": empty,
    "function_call": one_of("none", "auto"),
    "modalities": one_of(["text"]),
    "store": neutral(boolean, False, why=": nothing is stored"),
    "user": string,  # identifiers and metadata cannot change the answer
    "safety_identifier": string,
    "prompt_cache_key": string,
    "metadata": metadata,
    "service_tier": string,
}


def parse_request(body: dict[str, Any], default_temperature: float, cap: int) -> GenParams:
    """The sampling parameters of a chat completion request (every field checked)."""
    fields = parse_fields(body, FIELDS)
    if "stream_options" in fields and not fields.get("stream"):
        raise fail("stream_options", "only allowed when stream is true")
    asked = fields.get("max_completion_tokens", fields.get("max_tokens", cap))
    return GenParams(
        max_new_tokens=min(asked, cap),
        temperature=fields.get("temperature", default_temperature),
        top_p=fields.get("top_p"),
        top_k=fields.get("top_k") or None,
        seed=fields.get("seed"),
        stop=fields.get("stop", []),
    )


def models(request: Request) -> dict[str, Any]:
    ctx = context(request)
    entry = {
        "id": ctx.settings.model_name,
        "object": "model",
        "created": ctx.created,
        "owned_by": "tunelab",
    }
    return {"object": "list", "data": [entry]}


async def chat_completions(request: Request) -> Response:
    ctx = context(request)
    try:
        body = await read_json(request)
        params = parse_request(body, ctx.settings.temperature, ctx.settings.max_new_tokens)
        prompt = await run_in_threadpool(ctx.chat_model.prompt, body.get("messages"), params)
    except RequestError as e:
        return openai_error(e.status, str(e), e.param)
    except ClientGone:
        return gone(ctx, before_generation=True)
    meta = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "created": int(time.time()),
        "model": ctx.settings.model_name,
    }
    if body.get("stream"):
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        events = _events(request, ctx, prompt, params, meta, usage)
        return StreamingResponse(events, media_type="text/event-stream")
    async with watched_generation(request, ctx.chat_model, prompt, params, False) as gen:
        completion = await gen.result()
    if completion is None:
        return gone(ctx)
    message = {"role": "assistant", "content": completion.text}
    choice = {"index": 0, "message": message, "finish_reason": completion.finish_reason}
    return JSONResponse(
        {
            **meta,
            "object": "chat.completion",
            "choices": [{**choice, "logprobs": None}],
            "usage": _usage(completion),
        }
    )


def _usage(c: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "total_tokens": c.prompt_tokens + c.completion_tokens,
    }


def _chunk(meta: dict[str, Any], choices: list[dict[str, Any]], **extra: Any) -> str:
    payload = {**meta, "object": "chat.completion.chunk", "choices": choices, **extra}
    return f"data: {json.dumps(payload)}\n\n"


async def _events(
    request: Request,
    ctx: ServeContext,
    prompt: Prompt,
    params: GenParams,
    meta: dict[str, Any],
    include_usage: bool,
) -> AsyncIterator[str]:
    """Server-sent events: the role, one chunk per piece of text as it is generated, the finish
    reason, usage (when asked) and [DONE]. Generation starts with the stream and stops with it."""

    def delta(content: dict[str, str], finish: str | None = None) -> str:
        return _chunk(meta, [{"index": 0, "delta": content, "finish_reason": finish}])

    async with watched_generation(request, ctx.chat_model, prompt, params, True) as gen:
        yield delta({"role": "assistant", "content": ""})
        async for piece in gen.pieces():
            yield delta({"content": piece})
        completion = await gen.result()
        if completion is None:
            return
        yield delta({}, completion.finish_reason)
        if include_usage:
            yield _chunk(meta, [], usage=_usage(completion))
        yield "data: [DONE]\n\n"


def register(app: FastAPI) -> None:
    add_route(app, "GET", "/v1/models", models)
    add_route(app, "POST", "/v1/chat/completions", chat_completions)
