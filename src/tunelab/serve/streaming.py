"""One request's generation seen from the event loop: it runs on the model's generation thread,
its text pieces arrive on an asyncio queue, and it is cancelled (between two tokens, or before it
starts when it is still queued) as soon as the client disconnects."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator

from starlette.requests import Request

from tunelab.serve.chat import Cancelled, ChatModel, Completion, Prompt
from tunelab.serve.validation import GenParams

_DONE = object()


class Generation:
    def __init__(
        self, chat_model: ChatModel, prompt: Prompt, params: GenParams, stream: bool
    ) -> None:
        self.chat_model = chat_model
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancel_event = threading.Event()
        self.stream = stream
        chat_model.pending += 1
        self.future = self.loop.run_in_executor(chat_model.executor, self._run, prompt, params)
        self.future.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved

    def _run(self, prompt: Prompt, params: GenParams) -> Completion:
        try:
            emit = self._emit if self.stream else None
            return self.chat_model.run(prompt, params, emit, self.cancel_event)
        finally:
            self.loop.call_soon_threadsafe(self._finished)

    def _finished(self) -> None:  # on the event loop, as every change of the counters
        self.chat_model.pending -= 1
        self.queue.put_nowait(_DONE)

    def _emit(self, piece: str) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, piece)

    def cancel(self) -> None:
        if not self.cancel_event.is_set() and not self.future.done():
            self.chat_model.abandoned += 1
        self.cancel_event.set()

    async def pieces(self) -> AsyncIterator[str]:
        """The answer's text as it is generated (streaming only)."""
        while (item := await self.queue.get()) is not _DONE:
            yield item

    async def result(self) -> Completion | None:
        """The completion, or None when the client went away."""
        try:
            return await self.future
        except Cancelled:
            return None


async def _watch(request: Request, generation: Generation) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
    generation.cancel()


@contextlib.asynccontextmanager
async def watched_generation(
    request: Request, chat_model: ChatModel, prompt: Prompt, params: GenParams, stream: bool
) -> AsyncIterator[Generation]:
    """Start a generation that stops when the client disconnects (or this block is left)."""
    generation = Generation(chat_model, prompt, params, stream)
    watcher = asyncio.create_task(_watch(request, generation))
    try:
        yield generation
    finally:
        watcher.cancel()
        generation.cancel()
