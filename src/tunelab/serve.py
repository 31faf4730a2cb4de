"""Serve a tunelab checkpoint: `python -m tunelab.serve ckpt_path=... [port=8000]`.

OpenAI-compatible `/v1/chat/completions` (streaming as server-sent events, or not) and
`/v1/models`; Ollama-compatible `/api/chat` (streaming NDJSON, or not), `/api/tags` and
`/api/version`. So the official `openai` and `ollama` clients, and tunelab's own judge backends,
talk to a fine-tuned model as they would to a hosted one.

Built on FastAPI + uvicorn rather than LitServe: one small app serves both protocols (LitServe's
OpenAI spec has no Ollama side), runs in a thread for tests, and adds no worker processes for a
model that generates one request at a time anyway (requests are serialised with a lock).
Safe defaults: 127.0.0.1 only; a bearer token when the environment variable named by `token_env`
is set (401 otherwise); request bodies above `max_request_bytes` get 413; `max_new_tokens` caps
every request. Streaming sends the answer piece by piece once it is generated.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hydra
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from omegaconf import DictConfig

from tunelab.data.prompts import get_style
from tunelab.data.records import Record
from tunelab.models.api import LoadedModel
from tunelab.models.generation import generate
from tunelab.utils.config import conf_dir

log = logging.getLogger("tunelab.serve")


class RequestError(ValueError):
    """A bad request: answered with HTTP `status` and this message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ServeSettings:
    model_name: str = "tunelab"
    max_new_tokens: int = 256  # default and cap for every request
    max_request_bytes: int = 1 << 20
    token: str | None = None  # the bearer token itself (read from the environment)
    temperature: float = 0.0  # when the request gives none: greedy


@dataclass
class Completion:
    text: str
    pieces: list[str]  # the text in token-sized pieces, for streaming (joined == text)
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" or "length"


def _content_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise RequestError(f"{where}.content[{j}]: only text parts are supported")
            texts.append(str(part.get("text", "")))
        return "".join(texts)
    raise RequestError(f"{where}.content: expected a string, got {type(content).__name__}")


def messages_to_record(messages: Any) -> Record:
    """Chat messages -> Record (system, history of (user, assistant) turns, last user message)."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages: expected a non-empty list of {role, content} objects")
    system_parts: list[str] = []
    turns: list[tuple[str, str]] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or "role" not in m:
            raise RequestError(f"{where}: expected an object with 'role' and 'content'")
        role, text = m["role"], _content_text(m.get("content", ""), where)
        if role in ("system", "developer"):
            if turns:
                raise RequestError(f"{where}: system messages must come before the conversation")
            system_parts.append(text)
        elif role in ("user", "assistant"):
            expected = "user" if not turns or turns[-1][0] == "assistant" else "assistant"
            if role != expected:
                raise RequestError(f"{where}: expected a {expected} message (turns alternate)")
            turns.append((role, text))
        else:
            raise RequestError(
                f"{where}: unsupported role {role!r}; expected system/user/assistant"
            )
    if not turns or turns[-1][0] != "user":
        raise RequestError("messages: the last message must come from the user")
    history = [(turns[k][1], turns[k + 1][1]) for k in range(0, len(turns) - 1, 2)]
    return Record(
        instruction=turns[-1][1], system="\n\n".join(system_parts) or None, history=history
    )


class ChatModel:
    """A loaded model answering chat messages, one request at a time."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.style = get_style(loaded.prompt_style, loaded.tokenizer)
        self.lock = threading.Lock()
        loaded.model.eval()

    def chat(
        self,
        messages: Any,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        stop: list[str] | None = None,
    ) -> Completion:
        tok = self.loaded.tokenizer
        record = messages_to_record(messages)
        ids = self.style.encode_prompt(record, tok)  # message text never becomes special tokens
        context = self.loaded.model.cfg.context_length
        if len(ids) >= context:
            raise RequestError(
                f"the prompt is {len(ids)} tokens; this model's context is {context} tokens"
            )
        stop_ids = sorted(set(tok.stop_ids) | {tok.eos_id})
        with self.lock:
            out = generate(
                self.loaded.model,
                [ids],
                max_new_tokens=max_new_tokens,
                stop_ids=stop_ids,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                seed=seed,
            )[0]
        full = tok.decode(out)
        cut = len(full)
        for s in (*self.style.stop_strings, *(stop or [])):
            pos = full.find(s) if s else -1
            if 0 <= pos < cut:
                cut = pos
        text = full[:cut].strip()
        stopped = cut < len(full) or len(out) < min(max_new_tokens, context - len(ids))
        return Completion(
            text,
            self._pieces(out, text),
            len(ids),
            len(out),
            "stop" if stopped else "length",
        )

    def _pieces(self, out: list[int], text: str) -> list[str]:
        """Token-sized pieces of `text` (never a broken UTF-8 character)."""
        pieces, emitted = [], 0
        for k in range(1, len(out) + 1):
            cum = self.loaded.tokenizer.decode(out[:k]).lstrip()
            if cum.endswith("\ufffd"):
                continue
            upto = min(len(cum), len(text))
            if upto > emitted and text.startswith(cum[:upto]):
                pieces.append(text[emitted:upto])
                emitted = upto
        if emitted < len(text):
            pieces.append(text[emitted:])
        return pieces


# --- the app ---------------------------------------------------------------------------------
def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _max_tokens(value: Any, cap: int, name: str, nonpositive_means_cap: bool = False) -> int:
    if value is None:
        return cap
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{name}: expected an integer, got {value!r}")
    if value <= 0:
        if nonpositive_means_cap:
            return cap  # Ollama: -1 means "no limit"
        raise RequestError(f"{name}: must be >= 1, got {value}")
    if value > cap:
        log.info("%s=%d capped at max_new_tokens=%d", name, value, cap)
    return min(value, cap)


def _number(value: Any, name: str, kind: type = float) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(f"{name}: expected a number, got {value!r}")
    return kind(value)


def _stops(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return value
    raise RequestError(f"{name}: expected a string or a list of strings")


def create_app(loaded: LoadedModel, settings: ServeSettings):
    """The FastAPI app serving `loaded` with both protocols."""
    import tunelab

    chat_model = ChatModel(loaded)
    name = settings.model_name
    app = FastAPI(title="tunelab", version=getattr(tunelab, "__version__", "0"))
    app.state.chat_model = chat_model
    app.state.settings = settings
    created = int(time.time())

    def openai_error(status: int, message: str) -> JSONResponse:
        kind = {401: "authentication_error", 413: "request_too_large"}.get(
            status, "invalid_request_error"
        )
        return JSONResponse(
            {"error": {"message": message, "type": kind, "param": None, "code": None}},
            status_code=status,
            headers={"WWW-Authenticate": "Bearer"} if status == 401 else None,
        )

    def ollama_error(status: int, message: str) -> JSONResponse:
        return JSONResponse(
            {"error": message},
            status_code=status,
            headers={"WWW-Authenticate": "Bearer"} if status == 401 else None,
        )

    @app.middleware("http")
    async def guard(request: Request, call_next):
        error = ollama_error if request.url.path.startswith("/api/") else openai_error
        if settings.token and request.url.path != "/":
            header = request.headers.get("authorization", "")
            given = header[7:] if header[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(given.encode(), settings.token.encode()):
                return error(401, "missing or wrong bearer token")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > settings.max_request_bytes:
            return error(413, f"request body over {settings.max_request_bytes} bytes")
        return await call_next(request)

    async def read_json(request: Request) -> dict[str, Any]:
        body = bytearray()
        async for chunk in request.stream():  # bounded even without a Content-Length
            body += chunk
            if len(body) > settings.max_request_bytes:
                raise RequestError(f"request body over {settings.max_request_bytes} bytes", 413)
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestError(f"the request body is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise RequestError("the request body must be a JSON object")
        return data

    @app.get("/")
    def root():
        return PlainTextResponse("tunelab is running")

    # -- OpenAI ------------------------------------------------------------------------------
    @app.get("/v1/models")
    def models():
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": created, "owned_by": "tunelab"}],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            body = await read_json(request)
            n = body.get("n", 1)
            if n not in (1, None):
                raise RequestError("n: only 1 choice per request is supported")
            max_new = _max_tokens(
                body.get("max_completion_tokens", body.get("max_tokens")),
                settings.max_new_tokens,
                "max_tokens",
            )
            temperature = _number(body.get("temperature"), "temperature")
            kwargs = {
                "max_new_tokens": max_new,
                "temperature": settings.temperature if temperature is None else temperature,
                "top_p": _number(body.get("top_p"), "top_p"),
                "top_k": _number(body.get("top_k"), "top_k", int),
                "seed": _number(body.get("seed"), "seed", int),
                "stop": _stops(body.get("stop"), "stop"),
            }
            messages = body.get("messages")
            completion = await run_in_threadpool(chat_model.chat, messages, **kwargs)
        except RequestError as e:
            return openai_error(e.status, str(e))
        cid = f"chatcmpl-{uuid.uuid4().hex}"
        usage = {
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens,
        }
        now = int(time.time())
        if not body.get("stream"):
            return {
                "id": cid,
                "object": "chat.completion",
                "created": now,
                "model": name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": completion.text},
                        "finish_reason": completion.finish_reason,
                        "logprobs": None,
                    }
                ],
                "usage": usage,
            }
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def events():
            def chunk(delta: dict, finish: str | None) -> str:
                payload = {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": now,
                    "model": name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                }
                return f"data: {json.dumps(payload)}\n\n"

            yield chunk({"role": "assistant", "content": ""}, None)
            for piece in completion.pieces:
                yield chunk({"content": piece}, None)
            yield chunk({}, completion.finish_reason)
            if include_usage:
                payload = {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": now,
                    "model": name,
                    "choices": [],
                    "usage": usage,
                }
                yield f"data: {json.dumps(payload)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    # -- Ollama ------------------------------------------------------------------------------
    @app.get("/api/version")
    def version():
        return {"version": f"tunelab-{getattr(tunelab, '__version__', '0')}"}

    @app.get("/api/tags")
    def tags():
        cfg = loaded.model.cfg
        n_params = loaded.model.num_parameters
        return {
            "models": [
                {
                    "name": name,
                    "model": name,
                    "modified_at": datetime.fromtimestamp(created, UTC).isoformat(),
                    "size": n_params * 4,
                    "digest": uuid.uuid5(uuid.NAMESPACE_URL, f"tunelab:{loaded.source}").hex,
                    "details": {
                        "format": "tunelab",
                        "family": cfg.family,
                        "parameter_size": f"{n_params / 1e6:.1f}M",
                        "quantization_level": "F32",
                    },
                }
            ]
        }

    @app.post("/api/chat")
    async def ollama_chat(request: Request):
        try:
            body = await read_json(request)
            options = body.get("options") or {}
            if not isinstance(options, dict):
                raise RequestError("options: expected an object")
            temperature = _number(options.get("temperature"), "options.temperature")
            kwargs = {
                "max_new_tokens": _max_tokens(
                    options.get("num_predict"),
                    settings.max_new_tokens,
                    "options.num_predict",
                    nonpositive_means_cap=True,
                ),
                "temperature": settings.temperature if temperature is None else temperature,
                "top_p": _number(options.get("top_p"), "options.top_p"),
                "top_k": _number(options.get("top_k"), "options.top_k", int),
                "seed": _number(options.get("seed"), "options.seed", int),
                "stop": _stops(options.get("stop"), "options.stop"),
            }
            started = time.perf_counter_ns()
            completion = await run_in_threadpool(chat_model.chat, body.get("messages"), **kwargs)
            took = time.perf_counter_ns() - started
        except RequestError as e:
            return ollama_error(e.status, str(e))
        final = {
            "model": name,
            "created_at": _now_iso(),
            "message": {"role": "assistant", "content": completion.text},
            "done": True,
            "done_reason": completion.finish_reason,
            "total_duration": took,
            "load_duration": 0,
            "prompt_eval_count": completion.prompt_tokens,
            "prompt_eval_duration": 0,
            "eval_count": completion.completion_tokens,
            "eval_duration": took,
        }
        if body.get("stream", True) is False:  # Ollama streams unless told not to
            return final

        def lines():
            for piece in completion.pieces:
                part = {
                    "model": name,
                    "created_at": _now_iso(),
                    "message": {"role": "assistant", "content": piece},
                    "done": False,
                }
                yield json.dumps(part) + "\n"
            yield json.dumps({**final, "message": {"role": "assistant", "content": ""}}) + "\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    return app


# --- running ---------------------------------------------------------------------------------
class BackgroundServer:
    """Run an app with uvicorn in a thread on a loopback port (tests, notebooks).

    with BackgroundServer(app) as server: ... server.url ...
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on {self.url} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def settings_from_config(cfg: Any, loaded: LoadedModel) -> ServeSettings:
    token = None
    if cfg.get("token_env"):
        token = os.environ.get(cfg.token_env) or None
    name = cfg.get("model_name") or _default_name(loaded.source)
    if cfg.max_new_tokens < 1 or cfg.max_request_bytes < 1:
        raise ValueError(
            f"serve: max_new_tokens and max_request_bytes must be >= 1, got "
            f"{cfg.max_new_tokens} and {cfg.max_request_bytes}"
        )
    return ServeSettings(
        model_name=name,
        max_new_tokens=int(cfg.max_new_tokens),
        max_request_bytes=int(cfg.max_request_bytes),
        token=token,
        temperature=float(cfg.get("temperature", 0.0)),
    )


def resolve_device(device: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def _default_name(source: str) -> str:
    """`tunelab-<run folder>` for a run's checkpoint, else the preset/file/folder name."""
    path = Path(source)
    if path.suffix == ".ckpt" and path.parent.name == "checkpoints":
        return f"tunelab-{path.parent.parent.name}"
    return path.stem or "tunelab"


def serve(cfg: Any) -> None:
    import uvicorn

    from tunelab.models import load_pretrained

    if not cfg.get("ckpt_path"):
        raise ValueError("ckpt_path: give the checkpoint (or preset, HF folder, .gguf) to serve")
    loaded = load_pretrained(str(cfg.ckpt_path), prompt_style=cfg.get("prompt_style"))
    loaded.model.to(resolve_device(cfg.get("device", "auto")))
    settings = settings_from_config(cfg, loaded)
    loopback = cfg.host in ("127.0.0.1", "localhost", "::1")
    if not loopback and not settings.token:
        log.warning(
            "serving on %s without a token: anyone who reaches this port can use the model; set "
            "the environment variable %s",
            cfg.host,
            cfg.get("token_env") or "named by token_env",
        )
    log.info(
        "serving %s as %r on http://%s:%d (OpenAI: /v1/chat/completions, Ollama: /api/chat); "
        "max_new_tokens %d; %s",
        loaded.source,
        settings.model_name,
        cfg.host,
        cfg.port,
        settings.max_new_tokens,
        "bearer token required" if settings.token else "no token",
    )
    uvicorn.run(create_app(loaded, settings), host=cfg.host, port=int(cfg.port), log_level="info")


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="serve")
def main(cfg: DictConfig) -> None:
    from tunelab.utils.errors import friendly_errors

    with friendly_errors():
        serve(cfg)


if __name__ == "__main__":
    main()
