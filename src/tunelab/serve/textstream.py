"""Generated token ids -> text pieces, ready to stream the moment they are final.

Text is decoded incrementally with a few tokens of context (as vLLM's detokenizer does), so a
character split across tokens waits for its last byte and a SentencePiece tokenizer's word
boundaries come out as in a decode of the whole answer; the answer is stripped of surrounding
whitespace exactly as the whole answer would be, and text that may be the start of a stop string
is held back until it is known not to be one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


class TextStream:
    def __init__(self, decode: Callable[[list[int]], str], stops: Sequence[str] = ()) -> None:
        self.decode = decode
        self.stops = [s for s in stops if s]
        self.longest = max((len(s) for s in self.stops), default=0)
        self.ids: list[int] = []
        self.prefix = 0  # ids[prefix:read] is the context the next tokens are decoded with
        self.read = 0  # ids before `read` are in `raw`
        self.raw = ""  # everything decoded so far
        self.end: int | None = None  # where the first stop string begins, once one is seen
        self.sent = 0  # characters of the stripped answer handed out

    @property
    def stopped(self) -> bool:
        return self.end is not None

    @property
    def text(self) -> str:
        """The answer as it stands (after finish(): the whole answer)."""
        return self.raw[: self.end].strip()

    def feed(self, token_id: int) -> str:
        """Add one token; returns the new text that is now final ("" if none)."""
        if self.stopped:
            return ""
        before = len(self.raw)
        self.ids.append(token_id)
        self._decode(final=False)
        self._find_stop(before)
        return self._release(self.end if self.stopped else len(self.raw) - self._held())

    def finish(self) -> str:
        """No more tokens: returns the rest of the answer."""
        if not self.stopped:
            before = len(self.raw)
            self._decode(final=True)
            self._find_stop(before)
        return self._release(self.end if self.stopped else len(self.raw))

    def _decode(self, final: bool) -> None:
        """Move the tokens after `read` into `raw`, unless they end inside a character."""
        if self.read == len(self.ids):
            return
        known = self.decode(self.ids[self.prefix : self.read])
        text = self.decode(self.ids[self.prefix :])
        if final or (len(text) > len(known) and not text.endswith("\ufffd")):
            self.raw += text[len(known) :]
            self.prefix, self.read = self.read, len(self.ids)

    def _find_stop(self, before: int) -> None:
        start = max(0, before - self.longest + 1)
        found = [p for s in self.stops if (p := self.raw.find(s, start)) >= 0]
        if found:
            self.end = min(found)

    def _held(self) -> int:
        """Length of the longest tail of the text that could begin a stop string."""
        for n in range(min(self.longest - 1, len(self.raw)), 0, -1):
            tail = self.raw[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0

    def _release(self, upto: int) -> str:
        visible = self.raw[:upto].strip()
        piece = visible[self.sent :]
        self.sent = max(self.sent, len(visible))
        return piece
