"""Judge HTTP backends end to end: a real tunelab.serve on loopback driven by the official
`openai` and `ollama` clients, and a scripted real server for 500s, garbage, timeouts and refusals.
No mocks: every request goes over a socket."""

from __future__ import annotations

import time

import ollama
import openai
import pytest

from tests.judge.stub_server import (
    ScriptedServer,
    closed_port,
    error_reply,
    ollama_reply,
    openai_reply,
)
from tunelab.data.records import Record
from tunelab.judge import JudgeError, JudgeUnreachableError, OllamaJudge, OpenAIJudge
from tunelab.judge.evaluate import Judge, evaluate_responses, format_summary
from tunelab.judge.prompts import get_prompt
from tunelab.models import load_pretrained
from tunelab.serve import BackgroundServer, ServeSettings, create_app

MESSAGES = [{"role": "user", "content": "Name a colour."}]
RECORDS = [
    Record("Name a colour.", "", "red"),
    Record("Say the word number 1.", "", "river"),
    Record("Add the numbers.", "2 and 3", "5"),
]


@pytest.fixture(scope="module")
def served():
    """tiny-gpt2 with random weights (seed 1): deterministic garbage under greedy decoding."""
    loaded = load_pretrained("tiny-gpt2", seed=1)
    app = create_app(loaded, ServeSettings(model_name="tiny", max_new_tokens=8))
    with BackgroundServer(app) as server:
        yield server, app.state.chat_model


def test_openai_client_streaming_and_not(served):
    server, chat_model = served
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["tiny"]
    resp = client.chat.completions.create(model="tiny", messages=MESSAGES)
    expected = chat_model.chat(MESSAGES, max_new_tokens=8)
    assert resp.choices[0].message.content == expected.text != ""
    assert resp.choices[0].finish_reason == "length"  # random weights never say end-of-text
    assert resp.usage.completion_tokens == 8
    assert resp.usage.prompt_tokens == expected.prompt_tokens
    stream = client.chat.completions.create(
        model="tiny", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.text
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1  # pieces
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 8


def test_ollama_client_streaming_and_not(served):
    server, chat_model = served
    client = ollama.Client(host=server.url)
    assert [m.model for m in client.list().models] == ["tiny"]
    expected = chat_model.chat(MESSAGES, max_new_tokens=8).text
    resp = client.chat("tiny", MESSAGES, options={"seed": 123, "temperature": 0, "num_ctx": 2048})
    assert resp.message.content == expected and resp.done and resp.eval_count == 8
    parts = list(client.chat("tiny", MESSAGES, stream=True, options={"temperature": 0}))
    assert "".join(p.message.content for p in parts) == expected
    assert len(parts) > 2 and parts[-1].done and parts[-1].done_reason == "length"
    # num_predict caps the answer; multi-turn history and a system message are accepted.
    short = client.chat("tiny", MESSAGES, options={"num_predict": 2})
    assert short.eval_count == 2
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Name a colour."},
    ]
    assert client.chat("tiny", chat).message.content


@pytest.mark.parametrize(
    "make",
    [
        lambda url: OllamaJudge(model="tiny", host=url, stream=True),
        lambda url: OllamaJudge(model="tiny", host=url, stream=False),
        lambda url: OpenAIJudge(model="tiny", base_url=f"{url}/v1", stream=False),
        lambda url: OpenAIJudge(model="tiny", base_url=f"{url}/v1", stream=True),
    ],
    ids=["ollama-stream", "ollama", "openai", "openai-stream"],
)
def test_judges_end_to_end_against_tunelab_serve(served, make, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # loopback: no key needed
    server, chat_model = served
    backend = make(server.url)
    assert backend.ping() is None
    judge = Judge(backend, get_prompt("score_0_100"))
    result = evaluate_responses(RECORDS, ["red", "lake", "5"], judge)
    # The random model's garbage is counted, never skipped.
    assert [r["status"] for r in result.rows] == ["no_number"] * 3
    assert result.metrics["judge/parse_failures"] == 3 and "judge/mean" not in result.metrics
    assert result.summary["judge"]["status_counts"] == {"no_number": 3}
    for rec, row in zip(RECORDS, result.rows, strict=True):
        prompt = judge.prompt.render(rec, row["model_response"])
        expected = chat_model.chat([{"role": "user", "content": prompt}], max_new_tokens=8)
        assert row["judge_raw"] == expected.text
    # Reference metrics on the same answers: 2 of 3 exact, ROUGE-L 2/3.
    assert result.metrics["eval/exact_match"] == pytest.approx(2 / 3)
    assert result.metrics["eval/rouge_l"] == pytest.approx(2 / 3)
    assert "mean n/a over 0/3 answers; parse failures 3" in format_summary(result)
    backend.close()


# --- failure modes on a scripted server ------------------------------------------------------
@pytest.mark.parametrize("backend_kind", ["ollama", "openai"])
def test_5xx_is_retried_with_backoff_then_succeeds(backend_kind):
    ok = ollama_reply("Score: 85") if backend_kind == "ollama" else openai_reply("Score: 85")
    with ScriptedServer([error_reply(500), error_reply(503), ok]) as stub:
        backend = _backend(backend_kind, stub.url, retries=2, backoff=0.05)
        started = time.monotonic()
        assert backend.complete("prompt") == "Score: 85"
        assert time.monotonic() - started >= 0.05 + 0.1  # backoff doubled: 0.05 then 0.1
        assert backend.attempts == 3 and len(stub.requests) == 3


@pytest.mark.parametrize("backend_kind", ["ollama", "openai"])
def test_bad_judge_output_is_counted_and_reported(backend_kind):
    reply = ollama_reply if backend_kind == "ollama" else openai_reply
    script = [
        reply("85"),
        reply("I cannot rate this"),
        reply(""),
        reply("The score is 105"),
        error_reply(500),
        error_reply(500),  # the retry of record 5 fails too
        (200, "text/html", "<html>garbage</html>"),
        reply("Score: 40"),
    ]
    records = [Record(f"Question {i}.", "", "answer") for i in range(7)]
    with ScriptedServer(script) as stub:
        judge = Judge(_backend(backend_kind, stub.url, retries=1), get_prompt("score_0_100"))
        result = evaluate_responses(records, ["answer"] * 7, judge)
    statuses = [r["status"] for r in result.rows]
    assert statuses == [
        "ok",
        "no_number",
        "empty",
        "out_of_range",
        "server_error",
        "bad_response",
        "ok",
    ]
    assert [r["score"] for r in result.rows] == [85, None, None, None, None, None, 40]
    summary = result.summary["judge"]
    assert summary["parse_failures"] == 5 and summary["scored"] == 2 and summary["mean"] == 62.5
    assert summary["status_counts"] == {
        "ok": 2,
        "empty": 1,
        "no_number": 1,
        "out_of_range": 1,
        "server_error": 1,
        "bad_response": 1,
    }
    assert summary["histogram"]["counts"] == [0, 0, 0, 0, 1, 0, 0, 0, 1, 0]
    assert "500" in result.rows[4]["error"] and "after 2 tries" in result.rows[4]["error"]
    assert result.metrics["judge/mean"] == 62.5 and result.metrics["judge/parse_failures"] == 5


def test_garbage_ndjson_line_is_a_bad_response():
    with ScriptedServer([(200, "application/x-ndjson", '{"message": {"role"\nnot json\n')]) as s:
        result = evaluate_responses(
            RECORDS[:1], ["red"], Judge(_backend("ollama", s.url), get_prompt("score_0_100"))
        )
    assert (
        result.rows[0]["status"] == "bad_response" and "JSONDecodeError" in result.rows[0]["error"]
    )


@pytest.mark.parametrize("backend_kind", ["ollama", "openai"])
def test_unreachable_judge_gives_one_clear_error(backend_kind):
    url = f"http://127.0.0.1:{closed_port()}"
    backend = _backend(backend_kind, url, retries=1, backoff=0.01)
    judge = Judge(backend, get_prompt("score_0_100"))
    with pytest.raises(JudgeUnreachableError, match="unreachable after 2 tries") as info:
        evaluate_responses(RECORDS, ["a", "b", "c"], judge)
    assert url in str(info.value) and "\n" not in str(info.value)
    assert backend.attempts == 2  # stops at the first record: the judge is down, not one answer
    assert backend.ping() is not None


@pytest.mark.parametrize("backend_kind", ["ollama", "openai"])
def test_timeouts_are_retried_then_unreachable(backend_kind):
    ok = ollama_reply("1") if backend_kind == "ollama" else openai_reply("1")
    with ScriptedServer([("sleep", 1.0, ok)]) as stub:
        backend = _backend(backend_kind, stub.url, retries=1, backoff=0.01, timeout=0.2)
        with pytest.raises(JudgeUnreachableError, match="timed out"):
            backend.complete("prompt")
        assert len(stub.requests) == 2


@pytest.mark.parametrize("backend_kind", ["ollama", "openai"])
def test_refused_key_and_unknown_model_are_judge_errors(backend_kind):
    for status, message in [(401, "refused"), (404, "not found")]:
        with ScriptedServer([error_reply(status, "nope")]) as stub:
            backend = _backend(backend_kind, stub.url, retries=3)
            with pytest.raises(JudgeError, match=message):
                backend.complete("prompt")
            assert len(stub.requests) == 1  # not retried


def test_openai_key_comes_from_the_named_environment_variable(monkeypatch):
    monkeypatch.delenv("TUNELAB_TEST_KEY", raising=False)
    remote = OpenAIJudge(base_url="https://judge.example.com/v1", api_key_env="TUNELAB_TEST_KEY")
    with pytest.raises(JudgeError, match="TUNELAB_TEST_KEY"):
        remote.client()  # only when first used: building from a config stays offline
    with ScriptedServer([openai_reply("3")]) as stub:
        monkeypatch.setenv("TUNELAB_TEST_KEY", "sk-test-123")
        backend = OpenAIJudge(base_url=f"{stub.url}/v1", api_key_env="TUNELAB_TEST_KEY")
        assert backend.complete("p") == "3"
        assert "sk-test-123" not in str(backend.describe())


def _backend(kind: str, url: str, retries: int = 0, backoff: float = 0.01, timeout: float = 10):
    if kind == "ollama":
        return OllamaJudge(
            model="stub", host=url, retries=retries, backoff=backoff, timeout=timeout
        )
    return OpenAIJudge(
        model="stub",
        base_url=f"{url}/v1",
        api_key_env=None,
        retries=retries,
        backoff=backoff,
        timeout=timeout,
    )
