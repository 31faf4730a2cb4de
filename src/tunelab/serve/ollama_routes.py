"""Ollama-compatible routes: /api/version, /api/tags and /api/chat (one JSON object, or NDJSON
lines streamed token by token)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
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
    ollama_error,
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


def num_predict(value: Any, name: str) -> int:
    """Ollama's answer length: n >= 1, -1 (no limit) or -2 (fill the context): the cap applies."""
    n = integer()(value, name)
    if n == 0 or n < -2:
        raise fail(name, f"must be >= 1, or -1 (no limit) or -2 (fill the context), got {n}")
    return n


def seed(value: Any, name: str) -> int | None:
    """Ollama's seed: -1 means a random one (as llama.cpp), any other int64 is used."""
    n = integer()(value, name)
    return None if n == -1 else n


def keep_alive(value: Any, name: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise fail(name, f"expected a duration (string or number), got {value!r}")
    return value


OPTIONS = {
    "num_predict": num_predict,
    "num_ctx": integer(1),
    "temperature": number(0),
    "top_p": number(0, 1),
    "top_k": integer(0),  # 0: off
    "seed": seed,
    "stop": stops(),
    # sampling that tunelab does not implement: only the neutral value
    "min_p": neutral(number(0, 1), 0.0),
    "typical_p": neutral(number(0, 1), 1.0),
    "tfs_z": neutral(number(0), 1.0),
    "repeat_penalty": neutral(number(0), 1.0),
    "presence_penalty": neutral(number(-2, 2), 0.0),
    "frequency_penalty": neutral(number(-2, 2), 0.0),
    "mirostat": neutral(integer(0, 2), 0),
    "num_keep": neutral(integer(-1), 0, why=": the prompt is truncated from the left"),
    # knobs of the repeat penalty and mirostat, which are off
    "repeat_last_n": integer(-1),
    "penalize_newline": boolean,
    "mirostat_tau": number(0),
    "mirostat_eta": number(0),
    # where and how the model runs: they cannot change the answer
    "num_batch": integer(1),
    "num_gpu": integer(-1),
    "main_gpu": integer(0),
    "num_thread": integer(0),
    "numa": boolean,
    "low_vram": boolean,
    "f16_kv": boolean,
    "logits_all": boolean,
    "vocab_only": boolean,
    "use_mmap": boolean,
    "use_mlock": boolean,
    "embedding_only": boolean,
}
FIELDS = {
    "model": string,  # one model per server: the name is not checked
    "messages": anything,  # checked with the prompt
    "options": obj(OPTIONS),
    "stream": boolean,
    "format": empty,  # "" only: no JSON mode
    "tools": empty,
    "think": neutral(anything, False, why=": this model does not think"),
    "logprobs": neutral(boolean, False),
    "top_logprobs": neutral(integer(0, 20), 0),
    "keep_alive": keep_alive,
    "truncate": boolean,
    "shift": one_of(False),
}


def parse_request(body: dict[str, Any], default_temperature: float, cap: int) -> GenParams:
    """The sampling parameters of an /api/chat request (every field and option checked)."""
    fields = parse_fields(body, FIELDS)
    options = fields.get("options", {})
    asked = options.get("num_predict", -1)
    return GenParams(
        max_new_tokens=cap if asked < 0 else min(asked, cap),
        temperature=options.get("temperature", default_temperature),
        top_p=options.get("top_p"),
        top_k=options.get("top_k") or None,
        seed=options.get("seed"),
        stop=options.get("stop", []),
        num_ctx=options.get("num_ctx"),
        truncate=fields.get("truncate", True),
    )


def version(request: Request) -> dict[str, str]:
    import tunelab

    return {"version": f"tunelab-{getattr(tunelab, '__version__', '0')}"}


def tags(request: Request) -> dict[str, Any]:
    ctx = context(request)
    cfg, n_params = ctx.loaded.model.cfg, ctx.loaded.model.num_parameters
    name = ctx.settings.model_name
    entry = {
        "name": name,
        "model": name,
        "modified_at": datetime.fromtimestamp(ctx.created, UTC).isoformat(),
        "size": n_params * 4,
        "digest": uuid.uuid5(uuid.NAMESPACE_URL, f"tunelab:{ctx.loaded.source}").hex,
        "details": {
            "format": "tunelab",
            "family": cfg.family,
            "parameter_size": f"{n_params / 1e6:.1f}M",
            "quantization_level": "F32",
        },
    }
    return {"models": [entry]}


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _final(ctx: ServeContext, completion: Completion, content: str, took: int) -> dict[str, Any]:
    return {
        "model": ctx.settings.model_name,
        "created_at": _now_iso(),
        "message": {"role": "assistant", "content": content},
        "done": True,
        "done_reason": completion.finish_reason,
        "total_duration": took,
        "load_duration": 0,
        "prompt_eval_count": completion.prompt_tokens,
        "prompt_eval_duration": 0,
        "eval_count": completion.completion_tokens,
        "eval_duration": took,
    }


async def chat(request: Request) -> Response:
    ctx = context(request)
    started = time.perf_counter_ns()
    try:
        body = await read_json(request)
        params = parse_request(body, ctx.settings.temperature, ctx.settings.max_new_tokens)
        prompt = await run_in_threadpool(ctx.chat_model.prompt, body.get("messages"), params)
    except RequestError as e:
        return ollama_error(e.status, str(e), e.param)
    except ClientGone:
        return gone(ctx, before_generation=True)
    if body.get("stream", True) is not False:  # Ollama streams unless told not to
        lines = _lines(request, ctx, prompt, params, started)
        return StreamingResponse(lines, media_type="application/x-ndjson")
    async with watched_generation(request, ctx.chat_model, prompt, params, False) as gen:
        completion = await gen.result()
    if completion is None:
        return gone(ctx)
    took = time.perf_counter_ns() - started
    return JSONResponse(_final(ctx, completion, completion.text, took))


async def _lines(
    request: Request, ctx: ServeContext, prompt: Prompt, params: GenParams, started: int
) -> AsyncIterator[str]:
    """NDJSON: one line per piece of text as it is generated, then the final line with the
    counts. Generation starts with the stream and stops with it."""
    async with watched_generation(request, ctx.chat_model, prompt, params, True) as gen:
        async for piece in gen.pieces():
            part = {
                "model": ctx.settings.model_name,
                "created_at": _now_iso(),
                "message": {"role": "assistant", "content": piece},
                "done": False,
            }
            yield json.dumps(part) + "\n"
        completion = await gen.result()
        if completion is None:
            return
        took = time.perf_counter_ns() - started
        yield json.dumps(_final(ctx, completion, "", took)) + "\n"


def register(app: FastAPI) -> None:
    add_route(app, "GET", "/api/version", version)
    add_route(app, "GET", "/api/tags", tags)
    add_route(app, "POST", "/api/chat", chat)
