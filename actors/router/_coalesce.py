"""Runs of tokens instead of one message per token.

A model emits a token every few milliseconds, 3-4 characters each; one NATS
message (and one browser frame downstream) per token is mostly overhead. Text is
held until it reaches ``min_chars`` or the oldest held text is ``max_wait_s``
old, whichever comes first. The very first text goes out at once: time to first
token is what a person notices, and holding it would add the whole wait to it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

__all__ = ("Coalescer",)

Emit = Callable[[int, str], Awaitable[None]]


class Coalescer:
    """Buffers text and calls ``emit(seq, text)`` with gapless ``seq`` from 0.

    Run :meth:`run_timer` beside the producer so held text goes out on time even
    when the next token is slow to come.
    """

    def __init__(self, emit: Emit, *, min_chars: int, max_wait_s: float) -> None:
        self._emit = emit
        self.min_chars = min_chars
        self.max_wait_s = max_wait_s
        self._parts: list[str] = []
        self._size = 0
        self._since: float | None = None
        self._armed = anyio.Event()
        self.emitted = 0

    @property
    def pending(self) -> int:
        """Characters held back, not yet emitted."""
        return self._size

    async def add(self, text: str) -> None:
        self._parts.append(text)
        self._size += len(text)
        if self.emitted == 0 or self._size >= self.min_chars or self.max_wait_s <= 0:
            await self.flush()
        elif self._since is None:
            self._since = anyio.current_time()
            self._armed.set()

    async def flush(self) -> None:
        if not self._parts:
            return
        # take text and seq before the first await, so concurrent flushes stay in order
        text = "".join(self._parts)
        self._parts.clear()
        self._size = 0
        self._since = None
        seq = self.emitted
        self.emitted += 1
        await self._emit(seq, text)

    async def run_timer(self) -> None:
        while True:
            await self._armed.wait()
            self._armed = anyio.Event()
            since = self._since
            if since is None:
                continue
            await anyio.sleep_until(since + self.max_wait_s)
            if self._since == since:
                await self.flush()
