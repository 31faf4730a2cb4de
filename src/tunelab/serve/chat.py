"""The served model: prompt building within a token budget, and generation one request at a time
with text streamed through `generate`'s per-token callback and cancellation between tokens."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from tunelab.data.prompts import get_style
from tunelab.data.records import DataError, Record
from tunelab.models.api import LoadedModel
from tunelab.models.chat_template import ChatTemplateError
from tunelab.models.generation import generate
from tunelab.serve.messages import messages_to_record
from tunelab.serve.textstream import TextStream
from tunelab.serve.validation import GenParams, RequestError

log = logging.getLogger("tunelab.serve")


class Cancelled(Exception):
    """The client went away: the request was dropped (before or during generation)."""


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" or "length"


@dataclass
class Prompt:
    ids: list[int]
    window: int  # prompt + answer must fit in this many tokens


class ChatModel:
    """A loaded model answering chat messages, one request at a time (a one-thread executor)."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.style = get_style(loaded.prompt_style, loaded.tokenizer)
        self.lock = threading.Lock()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="tunelab-generate")
        self.tokens_generated = 0  # over the server's life (tests count abandoned work with it)
        self.pending = 0  # generations submitted and not finished
        self.abandoned = 0  # requests whose client went away before the answer was sent
        self.warned_num_ctx: set[int] = set()
        loaded.model.eval()

    @property
    def context(self) -> int:
        return self.loaded.model.cfg.context_length

    def encode(self, record: Record) -> list[int]:
        # message text never becomes special tokens (only the style's own template text)
        return self.style.encode_prompt(record, self.loaded.tokenizer)

    def prompt(self, messages: Any, params: GenParams) -> Prompt:
        """Token ids of the chat prompt. Without num_ctx a prompt that leaves no room in the
        model's context is refused; with num_ctx (Ollama) the window is num_ctx (at most the
        model's context) and a longer prompt loses its oldest tokens, as Ollama does (logged)."""
        try:
            ids = self.encode(messages_to_record(messages))
        except (DataError, ChatTemplateError) as e:  # e.g. a template that refuses system turns
            raise RequestError(f"messages: {e}", param="messages") from None
        if params.num_ctx is None:
            if len(ids) >= self.context:
                raise RequestError(
                    f"messages: the prompt is {len(ids)} tokens; this model's context is "
                    f"{self.context} "
                    "tokens",
                    param="messages",
                )
            return Prompt(ids, self.context)
        window = params.num_ctx
        if window > self.context and window not in self.warned_num_ctx:
            self.warned_num_ctx.add(window)  # once per value: the book's judge always sends 2048
            log.warning(
                "options.num_ctx=%d is above this model's context of %d tokens; the window is %d",
                window,
                self.context,
                self.context,
            )
        window = min(window, self.context)
        keep = window - min(params.max_new_tokens, window // 2)
        if len(ids) > keep and not params.truncate:
            raise RequestError(
                f"options.num_ctx: the prompt is {len(ids)} tokens; num_ctx={params.num_ctx} leaves "
                f"{keep} for it (truncate is false)",
                param="options.num_ctx",
            )
        if len(ids) > keep:
            log.warning(
                "truncating the prompt from %d to its last %d tokens (options.num_ctx=%d leaves "
                "room for %d answer tokens)",
                len(ids),
                keep,
                params.num_ctx,
                window - keep,
            )
            ids = ids[-keep:]
        return Prompt(ids, window)

    def run(
        self,
        prompt: Prompt,
        params: GenParams,
        emit: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> Completion:
        """Generate an answer; `emit` gets its text piece by piece as tokens arrive. Raises
        Cancelled when `cancel` is set before or during generation."""
        tok = self.loaded.tokenizer
        stops = (*self.style.stop_strings, *params.stop)
        stream = TextStream(tok.decode, stops)
        # top_p 0 keeps only the most likely token: greedy, exactly.
        temperature = 0.0 if params.top_p == 0 else params.temperature
        limit = max(0, min(params.max_new_tokens, prompt.window - len(prompt.ids)))

        def on_token(token_id: int) -> bool:
            if cancel is not None and cancel.is_set():
                return True  # the client left: this token is the last one computed
            piece = stream.feed(token_id)
            if piece and emit is not None:
                emit(piece)
            return stream.stopped

        with self.lock:
            if cancel is not None and cancel.is_set():
                raise Cancelled
            out = generate(
                self.loaded.model,
                [prompt.ids],
                max_new_tokens=limit,
                stop_ids=sorted(set(tok.stop_ids) | {tok.eos_id}),
                temperature=temperature,
                top_k=params.top_k,
                top_p=params.top_p,
                seed=params.seed,
                on_token=on_token,
            )[0]
            self.tokens_generated += len(out)
        if cancel is not None and cancel.is_set():
            raise Cancelled
        tail = stream.finish()
        if tail and emit is not None:
            emit(tail)
        finish = "stop" if stream.stopped or len(out) < limit else "length"
        return Completion(stream.text, len(prompt.ids), len(out), finish)

    def chat(self, messages: Any, max_new_tokens: int, **sampling: Any) -> Completion:
        """Answer `messages` here and now (tests, notebooks): sampling as in GenParams."""
        params = GenParams(max_new_tokens=max_new_tokens, **sampling)
        return self.run(self.prompt(messages, params), params)
