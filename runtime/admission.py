"""An adaptive concurrency limit for a pipeline's first hop.

Slots and queue-wait estimates (``runtime.concurrency``, ``max_queue_wait_s``)
see only one actor's own queue. On a saturated machine the queue that matters is
the CPU's: every stage slows at once, no actor's slots fill, and admitted queries
wait seconds while nothing is refused. So the first hop limits how many queries
are in flight by what their own latency says, TCP-style (additive increase,
multiplicative decrease): while queries finish within ``target_s`` the limit
grows by about one per limit's worth of completions; when they take longer it is
cut by ``backoff``, at most once per ``target_s`` (the completions of one slow
burst are one signal, not many). A query over the limit is refused at once with
``OVERLOADED``, so above capacity a client hears in milliseconds, and the queries
that are admitted keep their latency near the target.

``minimum`` is a floor no measurement moves: that many queries in flight are
always admitted, so a slow machine still answers a modest load and never refuses
a lone query.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ("AdaptiveLimit",)


class AdaptiveLimit:
    def __init__(self, target_s: float, *, minimum: int = 8, maximum: int = 256,
                 initial: int | None = None, backoff: float = 0.75,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if target_s <= 0:
            raise ValueError(f"target_s must be positive, not {target_s}")
        if not 1 <= minimum <= maximum:
            raise ValueError(f"need 1 <= minimum ({minimum}) <= maximum ({maximum})")
        if not 0 < backoff < 1:
            raise ValueError(f"backoff must be between 0 and 1, not {backoff}")
        self.target_s = target_s
        self.minimum, self.maximum, self.backoff = minimum, maximum, backoff
        self.limit = float(min(max(initial or 4 * minimum, minimum), maximum))
        self.inflight = 0
        self._clock = clock
        self._next_cut = 0.0
        self._latency_s = 0.0  # EWMA of completed queries: what a retry may expect

    def try_acquire(self) -> bool:
        """Take a place if one is free under the limit."""
        if self.inflight >= int(self.limit):
            return False
        self.inflight += 1
        return True

    def release(self, latency_s: float) -> None:
        """Give a place back, with how long its query took from arrival to the end of
        this hop's part; the limit learns from it."""
        self.inflight = max(0, self.inflight - 1)
        self._latency_s = latency_s if not self._latency_s else (
            self._latency_s + 0.2 * (latency_s - self._latency_s))
        now = self._clock()
        if latency_s > self.target_s:
            if now >= self._next_cut:
                self.limit = max(float(self.minimum), self.limit * self.backoff)
                self._next_cut = now + self.target_s
        elif self.inflight + 1 >= int(self.limit):  # grow only while the limit binds
            self.limit = min(float(self.maximum), self.limit + 1 / self.limit)

    def forget(self) -> None:
        """Give back a place whose query was refused after all (by a later check): no
        latency to learn from."""
        self.inflight = max(0, self.inflight - 1)

    def retry_after_s(self) -> float:
        """When a refused query may try again: about one query's time, at least 0.1 s."""
        return round(max(0.1, self._latency_s), 2)
