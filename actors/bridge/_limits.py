"""Rate limits per client identity: asks per minute (a leaky bucket) and asks at once.

All sockets of one identity share its limits, so opening more sockets does not
buy more asks. ``remaining`` is how many asks could start right now;
``reset_in_seconds`` is when ``remaining`` next grows by one (0 when it is full),
which is also when a refused ask may be retried. An ask refused by the concurrent
limit waits for one of the identity's asks to end, which nobody can know in
advance: its ``reset_in_seconds`` is an estimate, the moving average of how long
this bridge's recent asks took (:data:`FIRST_ASK_ESTIMATE_S` before any has ended).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

from aiolimiter import AsyncLimiter

__all__ = ("FIRST_ASK_ESTIMATE_S", "Denied", "LimitState", "RateLimits")

#: the estimated length of an ask before any has ended (a retrieval plus a short answer)
FIRST_ASK_ESTIMATE_S = 2.0
_EWMA_WEIGHT = 0.2  # of the newest ask: about the last ten asks count


class _Bucket(AsyncLimiter):
    """aiolimiter's leaky bucket, plus its fill level (for ``remaining`` and reset)."""

    __slots__ = ("in_flight",)

    def __init__(self, max_rate: float, time_period: float) -> None:
        super().__init__(max_rate, time_period)
        self.in_flight = 0

    def level(self) -> float:
        # aiolimiter keeps the level private; _leak() brings it up to date first
        self._leak()
        return self._level

    def drain_rate(self) -> float:
        return self.max_rate / self.time_period


@dataclass(frozen=True, slots=True)
class LimitState:
    limit: int
    remaining: int
    reset_in_seconds: float
    concurrent_limit: int
    in_flight: int


@dataclass(frozen=True, slots=True)
class Denied:
    """Why an ask was refused, and when to retry: for the concurrent limit an estimate
    (see the module's docstring) in ``retry_estimate_s``, ``retry_after_s`` None."""

    scope: Literal["per_minute", "concurrent"]
    state: LimitState
    retry_after_s: int | None
    retry_estimate_s: float | None = None


class RateLimits:
    def __init__(self, per_minute: int, concurrent: int, *, max_identities: int = 100_000,
                 period_s: float = 60.0) -> None:
        self.per_minute = per_minute
        self.concurrent = concurrent
        self.period_s = period_s
        self.max_identities = max_identities
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self.typical_ask_s = FIRST_ASK_ESTIMATE_S

    def __len__(self) -> int:
        return len(self._buckets)

    def _bucket(self, identity: str) -> _Bucket:
        bucket = self._buckets.get(identity)
        if bucket is None:
            if len(self._buckets) >= self.max_identities:
                self._evict_idle()
            bucket = self._buckets[identity] = _Bucket(self.per_minute, self.period_s)
        else:
            self._buckets.move_to_end(identity)
        return bucket

    def _evict_idle(self) -> None:
        """Forget identities with nothing in flight and an empty bucket (their limits
        are back to full, so forgetting them changes nothing)."""
        for identity in [i for i, b in self._buckets.items()
                         if b.in_flight == 0 and b.level() == 0]:
            del self._buckets[identity]

    def _state(self, bucket: _Bucket) -> LimitState:
        level = bucket.level()
        remaining = max(0, math.floor(self.per_minute - level + 1e-9))
        if level <= 0:
            reset = 0.0
        else:
            # remaining grows by one once the level has leaked below the next whole step
            reset = max(0.0, (level - (self.per_minute - remaining - 1)) / bucket.drain_rate())
        return LimitState(limit=self.per_minute, remaining=remaining,
                          reset_in_seconds=round(reset, 3), concurrent_limit=self.concurrent,
                          in_flight=bucket.in_flight)

    def state(self, identity: str) -> LimitState:
        return self._state(self._bucket(identity))

    async def admit(self, identity: str) -> LimitState | Denied:
        """Take one ask from the identity's limits, or say which limit refused it."""
        bucket = self._bucket(identity)
        if bucket.in_flight >= self.concurrent:
            return Denied("concurrent", self._state(bucket), None,
                          round(max(0.1, self.typical_ask_s), 3))
        if not bucket.has_capacity(1):
            state = self._state(bucket)
            return Denied("per_minute", state, max(1, math.ceil(state.reset_in_seconds)))
        # there is capacity, so this returns at once (no other task runs in between)
        await bucket.acquire(1)
        bucket.in_flight += 1
        return self._state(bucket)

    def release(self, identity: str, took_s: float | None = None) -> None:
        """An admitted ask has ended (done, failed, cancelled or abandoned) after
        ``took_s`` seconds, which feeds the concurrent limit's retry estimate."""
        if took_s is not None:
            self.typical_ask_s += _EWMA_WEIGHT * (took_s - self.typical_ask_s)
        bucket = self._buckets.get(identity)
        if bucket is not None and bucket.in_flight > 0:
            bucket.in_flight -= 1
