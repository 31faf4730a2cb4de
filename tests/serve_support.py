"""Helpers for the tunelab.serve tests: a gate that pauses generation between two tokens, raw HTTP
over a socket (for what the official clients cannot send or abandon), and waiting on counters."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any


class Gate:
    """Blocks the model's forward pass number `after + 1` until `open()`: with one prefill and one
    pass per further token, exactly `after` tokens have been generated while it waits."""

    def __init__(self, model: Any, after: int) -> None:
        self.after, self.calls = after, 0
        self.reached, self.opened = threading.Event(), threading.Event()
        self.handle = model.register_forward_pre_hook(self._hook)

    def _hook(self, module: Any, args: Any) -> None:
        self.calls += 1
        if self.calls > self.after and not self.opened.is_set():
            self.reached.set()
            assert self.opened.wait(60), "the test never opened the gate"

    def open(self) -> None:
        self.opened.set()

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.opened.set()
        self.handle.remove()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def raw_request(url: str, path: str, body: Any, extra: bytes = b"") -> socket.socket:
    """Send a POST with a JSON body (or raw bytes) and return the open socket, unread."""
    host, port = url.removeprefix("http://").split(":")
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n"
    ).encode()
    sock.sendall(head + extra + b"\r\n" + data)
    return sock


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Status code and body of one response (the server closes or sends Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    length = next(
        (
            int(h.split(b":")[1])
            for h in head.split(b"\r\n")
            if h.lower().startswith(b"content-length")
        ),
        None,
    )
    while length is not None and len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, body
