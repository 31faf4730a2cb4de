"""Judge backends: a model behind Ollama's /api/chat, any OpenAI-compatible server, or in process.

Every backend turns a prompt into the judge's raw text. HTTP backends retry timeouts, refused
connections, 429 and 5xx answers with exponential backoff; what still fails is either
- per request (a 5xx/4xx after the retries, a body that is not the protocol's JSON): raised as
  `JudgeRequestError(status)` so the caller records that status for that record, or
- the judge as a whole (unreachable after the retries, key refused, model unknown): raised as a
  one-line `JudgeUnreachableError` / `JudgeError`.
Clients are created on first use, so building a backend from a config never touches the network.
Keys come only from the environment variable named in the config (`api_key_env`).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlparse

from tunelab.judge.parsing import BAD_RESPONSE, PROMPT_TOO_LONG, SERVER_ERROR

log = logging.getLogger(__name__)
T = TypeVar("T")


class JudgeError(ValueError):
    """The judge cannot work at all (configuration, key, model name): one clear line."""


class JudgeUnreachableError(JudgeError, ConnectionError):
    """The judge server did not answer (refused, timed out) even after the retries."""


class JudgeRequestError(Exception):
    """One request failed for good; `status` is what that record's judge row says."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Retryable(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # "unreachable" or "server_error"


def with_retries(call: Callable[[], T], retries: int, backoff: float, where: str) -> T:
    """`call()`, retried on `_Retryable` with exponential backoff (backoff, 2 backoff, ...).

    After the last try: an unreachable server raises `JudgeUnreachableError` (one line), a server
    error `JudgeRequestError(SERVER_ERROR)`. Every HTTP backend, and any scorer that calls a
    server, goes through this one loop.
    """
    delay = backoff
    last: _Retryable | None = None
    for attempt in range(retries + 1):
        try:
            return call()
        except _Retryable as e:
            last = e
            if attempt < retries:
                log.warning("%s: %s; retry %d/%d in %.1fs", where, e, attempt + 1, retries, delay)
                time.sleep(delay)
                delay *= 2
    assert last is not None
    tries = retries + 1
    if last.kind == "unreachable":
        raise JudgeUnreachableError(f"{where} is unreachable after {tries} tries: {last}")
    raise JudgeRequestError(SERVER_ERROR, f"{last} (after {tries} tries)")


def status_error(code: int, text: str, refused: str, not_found: str) -> Exception:
    """An HTTP status as the error the retry loop and callers expect: 429/5xx retryable,
    401/403 `JudgeError(refused)`, 404 `JudgeError(not_found)`, others a per-request error."""
    if code >= 500 or code == 429:
        return _Retryable("server_error", text)
    if code in (401, 403):
        return JudgeError(refused)
    if code == 404:
        return JudgeError(not_found)
    return JudgeRequestError(SERVER_ERROR, text)


def _is_loopback(url: str) -> bool:
    host = urlparse(url if "://" in url else f"http://{url}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class JudgeBackend:
    """Base: retries with exponential backoff around `_once(prompt) -> text`."""

    kind = "base"

    def __init__(
        self, model: str, timeout: float = 120.0, retries: int = 3, backoff: float = 1.0
    ) -> None:
        if retries < 0 or backoff < 0 or timeout <= 0:
            raise ValueError(
                f"judge: retries and backoff must be >= 0 and timeout > 0, got "
                f"retries={retries}, backoff={backoff}, timeout={timeout}"
            )
        self.model, self.timeout, self.retries, self.backoff = model, timeout, retries, backoff
        self.attempts = 0  # requests sent, retries included (for tests and logs)

    @property
    def where(self) -> str:
        return self.kind

    def describe(self) -> dict[str, Any]:
        return {"backend": self.kind, "model": self.model}

    def _once(self, prompt: str) -> str:
        raise NotImplementedError

    def complete(self, prompt: str, answer_prefix: str | None = None) -> str:
        """The judge's text; `answer_prefix` only matters to backends that can prefill."""

        def once() -> str:
            self.attempts += 1
            return self._once(prompt)

        return with_retries(once, self.retries, self.backoff, f"judge {self.where}")

    def complete_many(
        self, prompts: Sequence[str], answer_prefix: str | None = None
    ) -> list[str | JudgeRequestError]:
        """One answer (or the request's error) per prompt; unreachable/config errors raise."""
        out: list[str | JudgeRequestError] = []
        for p in prompts:
            try:
                out.append(self.complete(p, answer_prefix))
            except JudgeRequestError as e:
                out.append(e)
        return out

    def ping(self) -> str | None:
        """None when the judge answers a cheap request, else why not (no retries).

        Raises JudgeError for configuration problems (a key variable that is not set)."""
        return None

    def close(self) -> None:
        pass


def _key_from_env(api_key_env: str | None, url: str, where: str) -> str | None:
    if not api_key_env:
        return None
    key = os.environ.get(api_key_env)
    if key:
        return key
    if _is_loopback(url):
        return None  # local servers rarely check keys
    raise JudgeError(
        f"{where}: environment variable {api_key_env} (judge.backend.api_key_env) is not set; "
        f"export the key there, or set judge.backend.api_key_env=null for a server without keys"
    )


class OllamaJudge(JudgeBackend):
    """The seed's judge: POST /api/chat on an Ollama server (seed 123, temperature 0, num_ctx 2048).

    Uses the official `ollama` client; with `stream: true` the NDJSON lines are joined.
    """

    kind = "ollama"

    def __init__(
        self,
        model: str = "llama3",
        host: str = "http://127.0.0.1:11434",
        options: dict[str, Any] | None = None,
        stream: bool = True,
        api_key_env: str | None = None,
        timeout: float = 120.0,
        retries: int = 3,
        backoff: float = 1.0,
    ) -> None:
        super().__init__(model, timeout, retries, backoff)
        self.host = host
        self.options = (
            dict(options)
            if options is not None
            else {"seed": 123, "temperature": 0, "num_ctx": 2048}
        )
        self.stream = stream
        self.api_key_env = api_key_env
        self._client = None

    @property
    def where(self) -> str:
        return f"ollama at {self.host} (model {self.model})"

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.kind,
            "host": self.host,
            "model": self.model,
            "options": self.options,
            "stream": self.stream,
        }

    def client(self):
        if self._client is None:
            import ollama

            key = _key_from_env(self.api_key_env, self.host, "judge ollama")
            headers = {"authorization": f"Bearer {key}"} if key else None
            self._client = ollama.Client(host=self.host, timeout=self.timeout, headers=headers)
        return self._client

    def _once(self, prompt: str) -> str:
        import httpx
        import ollama
        import pydantic

        messages = [{"role": "user", "content": prompt}]
        try:
            if self.stream:
                parts = self.client().chat(self.model, messages, options=self.options, stream=True)
                return "".join(p.message.content or "" for p in parts)
            return (
                self.client().chat(self.model, messages, options=self.options).message.content or ""
            )
        except ollama.ResponseError as e:
            raise self._status_error(e.status_code, str(e.error)) from None
        except (ConnectionError, httpx.TransportError) as e:
            kind = "timed out" if isinstance(e, httpx.TimeoutException) else "connection failed"
            raise _Retryable("unreachable", f"{kind}: {type(e).__name__}: {e}") from None
        except (
            json.JSONDecodeError,
            pydantic.ValidationError,
            UnicodeDecodeError,
            AttributeError,  # a JSON line that is not an object
            TypeError,
        ) as e:
            raise JudgeRequestError(
                BAD_RESPONSE, f"not an Ollama chat response: {type(e).__name__}: {_short(e)}"
            ) from None

    def _status_error(self, code: int, message: str) -> Exception:
        text = f"HTTP {code}: {_short(message)}" if code > 0 else _short(message)
        return status_error(
            code,
            text,
            f"judge {self.where}: the server refused the request ({text}); "
            f"put the key in the variable named by judge.backend.api_key_env",
            f"judge {self.where}: not found ({text}); is the model pulled "
            f"(`ollama pull {self.model}`) and is judge.backend.host an Ollama server?",
        )

    def ping(self) -> str | None:
        client = self.client()  # a configuration problem (missing key) raises JudgeError
        try:
            client.list()
        except Exception as e:  # noqa: BLE001 - reported, not raised
            return f"{type(e).__name__}: {_short(e)}"
        return None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class OpenAIJudge(JudgeBackend):
    """Any OpenAI-compatible /v1/chat/completions: OpenAI, Ollama's /v1, vLLM, llama.cpp, LM Studio.

    base_url from the config; the key from the environment variable `api_key_env` (a loopback
    server without a key gets a placeholder). The client's own retries are off: ours count.
    """

    kind = "openai"

    def __init__(
        self,
        model: str = "llama3",
        base_url: str = "http://127.0.0.1:11434/v1",
        api_key_env: str | None = "OPENAI_API_KEY",
        temperature: float = 0.0,
        seed: int | None = 123,
        max_tokens: int | None = None,
        stream: bool = False,
        timeout: float = 120.0,
        retries: int = 3,
        backoff: float = 1.0,
    ) -> None:
        super().__init__(model, timeout, retries, backoff)
        self.base_url, self.api_key_env = base_url, api_key_env
        self.temperature, self.seed, self.max_tokens, self.stream = (
            temperature,
            seed,
            max_tokens,
            stream,
        )
        self._client = None

    @property
    def where(self) -> str:
        return f"openai-compatible at {self.base_url} (model {self.model})"

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.kind,
            "base_url": self.base_url,
            "model": self.model,
            "temperature": self.temperature,
            "seed": self.seed,
            "max_tokens": self.max_tokens,
            "stream": self.stream,
        }

    def client(self):
        if self._client is None:
            import openai

            key = _key_from_env(self.api_key_env, self.base_url, "judge openai")
            self._client = openai.OpenAI(
                base_url=self.base_url,
                api_key=key or "no-key",
                max_retries=0,
                timeout=self.timeout,
            )
        return self._client

    def _request(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"model": self.model, "temperature": self.temperature}
        if self.seed is not None:
            kwargs["seed"] = self.seed
        if self.max_tokens is not None:
            kwargs["max_tokens"] = self.max_tokens
        return kwargs

    def _once(self, prompt: str) -> str:
        import openai

        messages = [{"role": "user", "content": prompt}]
        try:
            if self.stream:
                chunks = self.client().chat.completions.create(
                    messages=messages, stream=True, **self._request()
                )
                return "".join(_chunk_text(c) for c in chunks)
            resp = self.client().chat.completions.create(messages=messages, **self._request())
            return _completion_text(resp)
        except openai.APIConnectionError as e:  # includes APITimeoutError
            kind = "timed out" if isinstance(e, openai.APITimeoutError) else "connection failed"
            cause = e.__cause__ or e
            raise _Retryable(
                "unreachable", f"{kind}: {type(cause).__name__}: {_short(cause)}"
            ) from None
        except openai.APIStatusError as e:
            raise self._status_error(e.status_code, _error_message(e)) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise JudgeRequestError(
                BAD_RESPONSE, f"not a chat completion: {type(e).__name__}: {_short(e)}"
            ) from None

    def _status_error(self, code: int, message: str) -> Exception:
        text = f"HTTP {code}: {message}"
        return status_error(
            code,
            text,
            f"judge {self.where}: the key was refused ({text}); put it in the environment "
            f"variable {self.api_key_env or '(judge.backend.api_key_env is null)'}",
            f"judge {self.where}: not found ({text}); check judge.backend.base_url (it ends "
            f"in /v1) and judge.backend.model",
        )

    def ping(self) -> str | None:
        client = self.client()  # a configuration problem (missing key) raises JudgeError
        try:
            client.models.list()
        except Exception as e:  # noqa: BLE001 - reported, not raised
            return f"{type(e).__name__}: {_short(e)}"
        return None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _completion_text(resp: Any) -> str:
    try:
        content = resp.choices[0].message.content
    except (AttributeError, IndexError, TypeError, KeyError):
        raise JudgeRequestError(BAD_RESPONSE, f"not a chat completion: {_short(resp)}") from None
    if content is not None and not isinstance(content, str):
        raise JudgeRequestError(BAD_RESPONSE, f"message content is not text: {_short(content)}")
    return content or ""


def _chunk_text(chunk: Any) -> str:
    try:
        if not chunk.choices:
            return ""  # usage-only chunks
        return chunk.choices[0].delta.content or ""
    except (AttributeError, TypeError):
        raise JudgeRequestError(
            BAD_RESPONSE, f"not a chat completion chunk: {_short(chunk)}"
        ) from None


def _error_message(e: Any) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            err = err.get("message", err)
        return _short(err)
    return _short(getattr(e, "message", e))


def _short(obj: Any, n: int = 200) -> str:
    text = " ".join(str(obj).split())
    return text if len(text) <= n else text[: n - 3] + "..."


class LocalJudge(JudgeBackend):
    """A tunelab-loadable model judging in process (preset, checkpoint, HF folder or GGUF).

    The embedded default, SmolLM2-135M-Instruct, is a weak judge: fine for checking the pipeline,
    not for conclusions. Prompts are formatted with the model's prompt style; greedy decoding.
    prefill: start the judge's answer with the prompt's answer prefix ("Score: ",
    "Total rating: "): a small model then answers with a number instead of prose. The stored raw
    text includes the prefix.
    """

    kind = "local"

    def __init__(
        self,
        source: str = "smollm2-135m",
        prompt_style: str | None = None,
        max_new_tokens: int = 32,
        batch_size: int = 4,
        prefill: bool = True,
        device: str = "auto",
    ) -> None:
        super().__init__(source, timeout=1.0, retries=0, backoff=0.0)
        self.source, self.prompt_style = source, prompt_style
        self.max_new_tokens, self.batch_size, self.device = max_new_tokens, batch_size, device
        self.prefill = prefill
        self._loaded = None

    @property
    def where(self) -> str:
        return f"local {self.source}"

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.kind,
            "model": self.source,
            "prompt_style": self._loaded.prompt_style if self._loaded else self.prompt_style,
            "max_new_tokens": self.max_new_tokens,
            "prefill": self.prefill,
            "decoding": "greedy",
        }

    def loaded(self):
        if self._loaded is None:
            import torch

            from tunelab.models import load_pretrained

            self._loaded = load_pretrained(self.source, prompt_style=self.prompt_style)
            device = self.device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            self._loaded.model.to(device).eval()
            log.info("judge: loaded %s (prompt style %s)", self.source, self._loaded.prompt_style)
        return self._loaded

    def complete(self, prompt: str, answer_prefix: str | None = None) -> str:
        result = self.complete_many([prompt], answer_prefix)[0]
        if isinstance(result, JudgeRequestError):
            raise result
        return result

    def complete_many(
        self, prompts: Sequence[str], answer_prefix: str | None = None
    ) -> list[str | JudgeRequestError]:
        from tunelab.callbacks.responses import clean_answer
        from tunelab.data.prompts import get_style
        from tunelab.data.records import Record
        from tunelab.models.generation import generate

        loaded = self.loaded()
        tok = loaded.tokenizer
        style = get_style(loaded.prompt_style, tok)
        prefix = (answer_prefix or "") if self.prefill else ""
        limit = loaded.model.cfg.context_length
        out: list[str | JudgeRequestError] = [""] * len(prompts)
        encoded: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            ids = tok.encode_segments(
                [*style.prompt_segments(Record(instruction=p)), (prefix, False)]
            )
            if len(ids) + 1 > limit:
                out[i] = JudgeRequestError(
                    PROMPT_TOO_LONG,
                    f"judge prompt is {len(ids)} tokens; {self.source} has a context of {limit}",
                )
            else:
                encoded[i] = ids
        order = sorted(encoded, key=lambda i: len(encoded[i]))  # less padding per batch
        stop_ids = sorted(set(tok.stop_ids) | {tok.eos_id})
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            gens = generate(
                loaded.model, [encoded[i] for i in idx], self.max_new_tokens, stop_ids=stop_ids
            )
            for i, g in zip(idx, gens, strict=True):
                out[i] = prefix + clean_answer(tok.decode(g), style.stop_strings)
        self.attempts += len(prompts)
        return out
