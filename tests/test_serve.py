"""tunelab.serve: auth, request-size and token caps, request validation, the CLI entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import openai
import pytest

from tests.conftest import ROOT
from tests.judge.stub_server import closed_port
from tunelab.models import load_pretrained
from tunelab.serve import BackgroundServer, ServeSettings, create_app, messages_to_record

MESSAGES = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def loaded():
    return load_pretrained("tiny-gpt2", seed=1)


@pytest.fixture(scope="module")
def guarded(loaded):
    settings = ServeSettings(
        model_name="tiny", max_new_tokens=5, max_request_bytes=2000, token="s3cret"
    )
    with BackgroundServer(create_app(loaded, settings)) as server:
        yield server


def _post(server, path, body, token="s3cret", **kwargs):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{server.url}{path}", json=body, headers=headers, timeout=30, **kwargs)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_bearer_token_is_required(guarded, path):
    body = {"model": "tiny", "messages": MESSAGES, "stream": False}
    for token in (None, "wrong"):
        resp = _post(guarded, path, body, token=token)
        assert resp.status_code == 401 and resp.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{guarded.url}/v1/models").status_code == 401
    assert httpx.get(f"{guarded.url}/").status_code == 200  # health check stays open
    assert _post(guarded, path, body).status_code == 200


def test_openai_client_with_token(guarded):
    client = openai.OpenAI(base_url=f"{guarded.url}/v1", api_key="s3cret", max_retries=0)
    assert client.chat.completions.create(model="tiny", messages=MESSAGES).choices[0].message
    bad = openai.OpenAI(base_url=f"{guarded.url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="tiny", messages=MESSAGES)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_request_body_over_the_cap_gets_413(guarded, path):
    big = [{"role": "user", "content": "x" * 3000}]
    resp = _post(guarded, path, {"model": "tiny", "messages": big, "stream": False})
    assert resp.status_code == 413
    # Without a Content-Length (chunked upload) the body is still bounded while it is read.
    data = json.dumps({"model": "tiny", "messages": big}).encode()
    resp = httpx.post(
        f"{guarded.url}{path}",
        content=iter([data[:1000], data[1000:]]),
        headers={"Authorization": "Bearer s3cret", "Content-Type": "application/json"},
    )
    assert resp.status_code == 413


def test_max_new_tokens_is_capped(guarded):
    resp = _post(
        guarded, "/v1/chat/completions", {"model": "tiny", "messages": MESSAGES, "max_tokens": 500}
    )
    assert resp.status_code == 200
    assert resp.json()["usage"]["completion_tokens"] == 5
    assert resp.json()["choices"][0]["finish_reason"] == "length"
    resp = _post(
        guarded,
        "/api/chat",
        {"model": "tiny", "messages": MESSAGES, "stream": False, "options": {"num_predict": 999}},
    )
    assert resp.json()["eval_count"] == 5
    # Fewer than the cap is honoured; -1 (Ollama's "no limit") means the cap.
    resp = _post(
        guarded, "/v1/chat/completions", {"model": "tiny", "messages": MESSAGES, "max_tokens": 2}
    )
    assert resp.json()["usage"]["completion_tokens"] == 2
    body = {"model": "tiny", "messages": MESSAGES, "stream": False, "options": {"num_predict": -1}}
    assert _post(guarded, "/api/chat", body).json()["eval_count"] == 5


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, "expected a user message"),
        ({"messages": [{"role": "tool", "content": "hi"}]}, "unsupported role"),
        ({"messages": MESSAGES, "max_tokens": 0}, "must be >= 1"),
        ({"messages": MESSAGES, "n": 2}, "only 1"),
        ({"messages": MESSAGES, "temperature": "hot"}, "expected a number"),
        ({"messages": [{"role": "user", "content": "x " * 400}]}, "context is 256 tokens"),
    ],
)
def test_bad_requests_get_400_with_a_message(guarded, body, message):
    resp = _post(guarded, "/v1/chat/completions", {"model": "tiny", **body})
    assert resp.status_code == 400
    assert message in resp.json()["error"]["message"]
    resp = _post(guarded, "/api/chat", {"model": "tiny", "stream": False, **body})
    if "max_tokens" not in body and "n" not in body and "temperature" not in body:
        assert resp.status_code == 400 and message in resp.json()["error"]


def test_invalid_json_body(guarded):
    resp = httpx.post(
        f"{guarded.url}/api/chat", content=b"{nope", headers={"Authorization": "Bearer s3cret"}
    )
    assert resp.status_code == 400 and "not valid JSON" in resp.json()["error"]


def test_messages_become_a_record_with_history_and_system():
    record = messages_to_record(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Bye"},
        ]
    )
    assert record.system == "Be brief." and record.history == [("Hi", "Hello.")]
    assert record.instruction == "Bye" and record.input == ""


def test_sampling_is_seeded(guarded):
    body = {"model": "tiny", "messages": MESSAGES, "temperature": 1.0, "seed": 7}
    a = _post(guarded, "/v1/chat/completions", body).json()["choices"][0]["message"]["content"]
    b = _post(guarded, "/v1/chat/completions", body).json()["choices"][0]["message"]["content"]
    assert a == b


def test_serve_entry_point_on_loopback_with_token(tmp_path):
    port = closed_port()
    env = {**os.environ, "TUNELAB_SERVE_TOKEN": "tok"}
    cmd = [
        sys.executable,
        "-m",
        "tunelab.serve",
        "ckpt_path=tiny-gpt2",
        f"port={port}",
        "max_new_tokens=3",
        f"hydra.run.dir={tmp_path}",
        "extras.print_config=false",
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.3)
        assert httpx.get(f"{url}/v1/models").status_code == 401
        models = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer tok"}).json()
        assert models["data"][0]["id"] == "tiny-gpt2"
        resp = httpx.post(
            f"{url}/api/chat",
            json={"model": "x", "messages": MESSAGES, "stream": False},
            headers={"Authorization": "Bearer tok"},
            timeout=30,
        )
        assert resp.json()["eval_count"] <= 3
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("max_new_tokens", 0, "serve: max_new_tokens must be an integer >= 1, got 0"),
        ("max_request_bytes", "big", "serve: max_request_bytes must be an integer >= 1"),
        ("temperature", 3, "serve: temperature must be a number in [0, 2], got 3"),
        ("request_timeout", 0, "serve: request_timeout must be a number of seconds > 0, got 0"),
    ],
)
def test_bad_serve_settings_are_one_line(loaded, key, value, message):
    from omegaconf import OmegaConf

    from tunelab.serve import settings_from_config

    cfg = {"max_new_tokens": 4, "max_request_bytes": 100, "token_env": None, key: value}
    with pytest.raises(ValueError) as info:
        settings_from_config(OmegaConf.create(cfg), loaded)
    assert str(info.value).startswith(message)
