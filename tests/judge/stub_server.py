"""A real HTTP server on loopback that answers from a script (for judge failure modes).

Each request takes the next scripted reply (the last one repeats): (status, content_type, body)
or ("sleep", seconds, reply). Requests are recorded, so tests can count retries.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = tuple[Any, ...]


def ollama_reply(text: str, stream: bool = True) -> Reply:
    """An Ollama /api/chat answer: NDJSON pieces (stream) or one JSON object."""
    done = {"model": "stub", "created_at": "2024-01-01T00:00:00Z", "done": True}
    if not stream:
        body = json.dumps({**done, "message": {"role": "assistant", "content": text}})
        return (200, "application/json", body)
    lines = [
        json.dumps(
            {"model": "stub", "message": {"role": "assistant", "content": piece}, "done": False}
        )
        for piece in ([text[: len(text) // 2], text[len(text) // 2 :]] if text else [])
    ]
    lines.append(json.dumps({**done, "message": {"role": "assistant", "content": ""}}))
    return (200, "application/x-ndjson", "\n".join(lines) + "\n")


def openai_reply(text: str) -> Reply:
    body = {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 0,
        "model": "stub",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
    }
    return (200, "application/json", json.dumps(body))


def error_reply(status: int, message: str = "boom") -> Reply:
    return (status, "application/json", json.dumps({"error": message}))


class ScriptedServer:
    def __init__(self, script: list[Reply]) -> None:
        self.script = list(script)
        self.requests: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                owner.requests.append({"path": self.path, "body": body})
                reply = owner.script.pop(0) if len(owner.script) > 1 else owner.script[0]
                if reply[0] == "sleep":
                    time.sleep(reply[1])
                    reply = reply[2]
                status, ctype, text = reply
                data = text.encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

            do_GET = _reply
            do_POST = _reply

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
