"""tunelab.serve and clients that go away: abandoned requests are dropped while they wait and
stopped between two tokens while they generate, so the next client is served at once; stalled
connections are closed (headers) or answered 408 (body). Work is counted in generated tokens."""

from __future__ import annotations

import socket

import ollama
import openai
import pytest

from tests.serve_support import Gate, raw_request, read_response, wait_for
from tunelab.models import load_pretrained
from tunelab.serve import BackgroundServer, ServeSettings, create_app

MESSAGES = [{"role": "user", "content": "Name a colour."}]
ASK = 200  # tokens each abandoned request asks for (tiny-gpt2's random weights never stop early)


@pytest.fixture(scope="module")
def served():
    loaded = load_pretrained("tiny-gpt2", seed=1)
    settings = ServeSettings(model_name="tiny", max_new_tokens=ASK, request_timeout=0.5)
    app = create_app(loaded, settings)
    with BackgroundServer(app) as server:
        yield server, app.state.chat_model


def _settled(chat_model) -> None:
    wait_for(lambda: chat_model.pending == 0, "generations to finish")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": MESSAGES, "max_tokens": ASK}),
        ("/api/chat", {"messages": MESSAGES, "stream": False, "options": {"num_predict": ASK}}),
        ("/v1/chat/completions", {"messages": MESSAGES, "max_tokens": ASK, "stream": True}),
        ("/api/chat", {"messages": MESSAGES, "options": {"num_predict": ASK}}),
    ],
    ids=["openai", "ollama", "openai-stream", "ollama-stream"],
)
def test_abandoned_queued_requests_generate_nothing(served, path, body):
    server, chat_model = served
    _settled(chat_model)
    before, abandoned = chat_model.tokens_generated, chat_model.abandoned
    with chat_model.lock:  # the model is busy: the 10 requests queue behind it
        socks = []
        for k in range(10):
            socks.append(raw_request(server.url, path, {"model": "tiny", **body}))
            if not body.get("stream", path == "/api/chat"):  # streams start when answered
                wait_for(lambda k=k: chat_model.pending == k + 1, "the request to queue")
        for s in socks:
            s.close()
        wait_for(lambda: chat_model.abandoned == abandoned + 10, "the server to see 10 clients go")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    resp = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=5)
    assert resp.usage.completion_tokens == 5
    _settled(chat_model)
    # The 10 abandoned requests generated nothing: only the new one's 5 tokens were made.
    assert chat_model.tokens_generated - before == 5
    assert chat_model.abandoned == abandoned + 10  # each counted once


def test_abandoned_streams_stop_between_two_tokens(served):
    server, chat_model = served
    _settled(chat_model)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    for protocol in ("openai", "ollama"):
        before, abandoned = chat_model.tokens_generated, chat_model.abandoned
        with Gate(chat_model.loaded.model, after=1):
            if protocol == "openai":
                stream = client.chat.completions.create(
                    model="tiny", messages=MESSAGES, max_tokens=ASK, stream=True
                )
                assert next(stream).choices[0].delta.role == "assistant"
                assert next(stream).choices[0].delta.content  # a token's text, live
                stream.close()
            else:
                parts = ollama.Client(host=server.url).chat(
                    "tiny", MESSAGES, stream=True, options={"num_predict": ASK}
                )
                assert next(parts).message.content
                parts.close()
            wait_for(lambda a=abandoned: chat_model.abandoned == a + 1, "the disconnect")
        _settled(chat_model)
        # The token streamed before the gate, the one computed when it opened, then the stop.
        assert chat_model.tokens_generated - before == 2, protocol


def test_client_timeout_stops_a_non_streaming_generation(served):
    server, chat_model = served
    _settled(chat_model)
    before, abandoned = chat_model.tokens_generated, chat_model.abandoned
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=1.0)
    with Gate(chat_model.loaded.model, after=2):
        with pytest.raises(openai.APITimeoutError):
            client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=ASK)
        wait_for(lambda: chat_model.abandoned == abandoned + 1, "the disconnect")
    _settled(chat_model)
    assert chat_model.tokens_generated - before == 3


def test_stalled_headers_are_closed_and_a_stalled_body_gets_408(served):
    server, _ = served
    host, port = server.url.removeprefix("http://").split(":")
    for partial in (b"", b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Le"):
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(partial)
            assert sock.recv(1024) == b""  # closed by the server after request_timeout (0.5 s)
    with raw_request(server.url, "/api/chat", b'{"messages": ') as sock:
        # Content-Length says 13 bytes and 13 came: a complete (bad) body gets 400 ...
        assert read_response(sock)[0] == 400
    body = b'{"model": "tiny", "messages": []}'
    host_header = f"Host: {host}\r\n".encode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        head = b"POST /api/chat HTTP/1.1\r\n" + host_header + b"Content-Length: 100\r\n\r\n"
        sock.sendall(head + body)  # ... 33 of 100 bytes and then nothing: 408
        status, answer = read_response(sock)
        assert status == 408 and b"did not arrive within 0.5 s" in answer
