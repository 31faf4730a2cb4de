"""The FastAPI app: shared plumbing (auth, size and time limits, JSON bodies, error bodies, routes
with and without a trailing slash); the protocols live in openai_routes and ollama_routes."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from tunelab.models.api import LoadedModel
from tunelab.serve.chat import ChatModel
from tunelab.serve.settings import ServeSettings
from tunelab.serve.validation import RequestError


class ClientGone(Exception):
    """The client disconnected before its request was read."""


@dataclass
class ServeContext:
    loaded: LoadedModel
    chat_model: ChatModel
    settings: ServeSettings
    created: int  # when the server started (Unix time)


def context(request: Request) -> ServeContext:
    return request.app.state.ctx


def _printable(text: str | None) -> str | None:
    """Error text as valid UTF-8 (a field name can hold a lone surrogate)."""
    return None if text is None else text.encode("utf-8", "backslashreplace").decode("utf-8")


def openai_error(status: int, message: str, param: str | None = None) -> JSONResponse:
    message, param = _printable(message), _printable(param)
    kind = {401: "authentication_error", 413: "request_too_large"}.get(
        status, "invalid_request_error"
    )
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": None}},
        status_code=status,
        headers={"WWW-Authenticate": "Bearer"} if status == 401 else None,
    )


def ollama_error(status: int, message: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": _printable(message)},
        status_code=status,
        headers={"WWW-Authenticate": "Bearer"} if status == 401 else None,
    )


def gone(ctx: ServeContext, before_generation: bool = False) -> Response:
    """Nobody is listening any more (nginx's 499 "client closed request"). A generation that was
    started counted its abandonment when it was cancelled."""
    if before_generation:
        ctx.chat_model.abandoned += 1
    return Response(status_code=499)


class Guard:
    """ASGI middleware: bearer token and declared body size, before any route runs."""

    def __init__(self, app: ASGIApp, settings: ServeSettings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            response = self.refusal(scope)
            if response is not None:
                return await response(scope, receive, send)
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> Response | None:
        path, limit = scope["path"], self.settings.max_request_bytes
        error = ollama_error if path.startswith("/api/") else openai_error
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.settings.token and path != "/":
            header = headers.get("authorization", "")
            given = header[7:] if header[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(given.encode(), self.settings.token.encode()):
                return error(401, "missing or wrong bearer token")
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            return error(413, f"request body over {limit} bytes")
        return None


async def _read_body(request: Request, limit: int) -> bytes:
    body = bytearray()
    async for chunk in request.stream():  # bounded even without a Content-Length
        body += chunk
        if len(body) > limit:
            raise RequestError(f"request body over {limit} bytes", 413)
    return bytes(body)


async def read_json(request: Request) -> dict[str, Any]:
    """The request body as a JSON object: 400 (not JSON), 408 (too slow), 413 (too big)."""
    settings = context(request).settings
    try:
        body = await asyncio.wait_for(
            _read_body(request, settings.max_request_bytes), settings.request_timeout
        )
    except TimeoutError:
        raise RequestError(
            f"the request body did not arrive within {settings.request_timeout:g} s", 408
        ) from None
    except ClientDisconnect:
        raise ClientGone from None
    try:
        data = json.loads(body)  # NaN and Infinity parse, to be refused by field
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(f"the request body is not valid JSON: {e}") from None
    except RecursionError:
        raise RequestError("the request body is not valid JSON: nested too deeply") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise RequestError(f"the request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise RequestError("the request body must be a JSON object")
    return data


def add_route(app: FastAPI, method: str, path: str, endpoint: Callable[..., Any]) -> None:
    """Serve `path` and `path/` alike: no redirect (urllib does not follow a 307 for a POST)."""
    app.add_api_route(path, endpoint, methods=[method])
    if path != "/":
        app.add_api_route(f"{path}/", endpoint, methods=[method], include_in_schema=False)


def create_app(loaded: LoadedModel, settings: ServeSettings) -> FastAPI:
    """The FastAPI app serving `loaded` with both protocols."""
    import tunelab
    from tunelab.serve import ollama_routes, openai_routes

    app = FastAPI(title="tunelab", version=getattr(tunelab, "__version__", "0"))
    ctx = ServeContext(loaded, ChatModel(loaded), settings, int(time.time()))
    app.state.ctx, app.state.chat_model, app.state.settings = ctx, ctx.chat_model, settings
    app.add_middleware(Guard, settings=settings)
    add_route(app, "GET", "/", lambda: PlainTextResponse("tunelab is running"))
    openai_routes.register(app)
    ollama_routes.register(app)
    return app
