"""Serve a tunelab checkpoint: `python -m tunelab.serve ckpt_path=... [port=8000]`.

OpenAI-compatible `/v1/chat/completions` (streaming as server-sent events, or not) and
`/v1/models`; Ollama-compatible `/api/chat` (streaming NDJSON, or not), `/api/tags` and
`/api/version`; every path also with a trailing slash. So the official `openai` and `ollama`
clients, and tunelab's own judge backends, talk to a fine-tuned model as they would to a hosted one.

Built on FastAPI + uvicorn rather than LitServe: one small app serves both protocols (LitServe's
OpenAI spec has no Ollama side), runs in a thread for tests, and adds no worker processes for a
model that generates one request at a time anyway (one generation thread, first come first served).
Safe defaults: 127.0.0.1 only; a bearer token when the environment variable named by `token_env`
is set (401 otherwise); request bodies above `max_request_bytes` get 413; `max_new_tokens` caps
every request; headers and body must arrive within `request_timeout`. Every request field is
checked against the protocol's ranges (400 naming the field). Streaming sends text as tokens are
generated; a client that disconnects stops its generation (or drops it while it still waits).

Modules: settings, validation (field checks), messages (chat -> Record), textstream (incremental
decoding, stop strings), chat (ChatModel), streaming (generation <-> event loop, disconnects),
app (shared plumbing), openai_routes, ollama_routes, server (uvicorn), cli.
"""

from tunelab.serve.app import create_app
from tunelab.serve.chat import ChatModel, Completion
from tunelab.serve.messages import messages_to_record
from tunelab.serve.server import BackgroundServer
from tunelab.serve.settings import ServeSettings, resolve_device, settings_from_config
from tunelab.serve.validation import GenParams, RequestError

__all__ = [
    "BackgroundServer",
    "ChatModel",
    "Completion",
    "GenParams",
    "RequestError",
    "ServeSettings",
    "create_app",
    "messages_to_record",
    "resolve_device",
    "settings_from_config",
]
