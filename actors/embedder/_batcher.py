"""Coalesce concurrent embedding requests into shared, full ONNX calls.

Under query load many requests carry one short text each, and during ingest
many documents carry a few chunks each; one model call per request wastes most
of each call's fixed cost. Requests queue here; a single runner cuts the queued
texts into batches of exactly ``batch_size`` (a request may span two batches),
waiting at most ``max_wait_s`` for more texts when a batch is not full, and
runs each batch on the worker thread.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio
import numpy as np
from numpy.typing import NDArray

from ragbus.runtime import WorkerThread

__all__ = ("MicroBatcher",)

EmbedFn = Callable[[Sequence[str]], NDArray[np.float32]]


@dataclass(eq=False, slots=True)
class _Pending:
    texts: list[str]
    parts: list[NDArray[np.float32]] = field(default_factory=list)
    filled: int = 0
    done: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None


class MicroBatcher:
    def __init__(self, embed: EmbedFn, worker: WorkerThread, *, dim: int, batch_size: int,
                 max_wait_s: float) -> None:
        self._embed = embed
        self._worker = worker
        self._dim = dim
        self._batch_size = batch_size
        self._max_wait = max_wait_s
        self._send, self._receive = anyio.create_memory_object_stream[_Pending](10_000)
        self.model_calls = 0
        self.texts_embedded = 0

    async def embed(self, texts: list[str]) -> NDArray[np.float32]:
        """Vectors for ``texts`` (n, dim), computed together with whatever else is waiting."""
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        pending = _Pending(texts)
        await self._send.send(pending)
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.parts[0] if len(pending.parts) == 1 else np.concatenate(pending.parts)

    async def run(self) -> None:
        """The runner: lives as the actor's background task."""
        # (request, first text not yet embedded); a request may be cut across batches
        queue: deque[tuple[_Pending, int]] = deque()
        queued = 0
        async with self._receive:
            while True:
                if not queue:
                    first = await self._receive.receive()
                    queue.append((first, 0))
                    queued = len(first.texts)
                with anyio.move_on_after(self._max_wait):
                    while queued < self._batch_size:
                        nxt = await self._receive.receive()
                        queue.append((nxt, 0))
                        queued += len(nxt.texts)
                while True:  # whatever arrived meanwhile joins without waiting
                    try:
                        nxt = self._receive.receive_nowait()
                    except anyio.WouldBlock:
                        break
                    queue.append((nxt, 0))
                    queued += len(nxt.texts)
                await self._run_batch(queue)
                queued = sum(len(p.texts) - start for p, start in queue)

    async def _run_batch(self, queue: deque[tuple[_Pending, int]]) -> None:
        """Embed up to ``batch_size`` texts from the head of ``queue``."""
        texts: list[str] = []
        spans: list[tuple[_Pending, int, int]] = []
        while queue and len(texts) < self._batch_size:
            pending, start = queue.popleft()
            take = min(len(pending.texts) - start, self._batch_size - len(texts))
            texts.extend(pending.texts[start:start + take])
            spans.append((pending, start, take))
            if start + take < len(pending.texts):
                queue.appendleft((pending, start + take))
        try:
            vectors = await self._worker.run(self._embed, texts)
        except Exception as exc:
            failed = {p for p, _, _ in spans}
            for p in failed:
                p.error = exc
                p.done.set()
            # drop the rest of a failed request still queued
            remaining = [(p, s) for p, s in queue if p not in failed]
            queue.clear()
            queue.extend(remaining)
            return
        self.model_calls += 1
        self.texts_embedded += len(texts)
        offset = 0
        for pending, _, take in spans:
            pending.parts.append(vectors[offset:offset + take])
            pending.filled += take
            offset += take
            if pending.filled == len(pending.texts):
                pending.done.set()
