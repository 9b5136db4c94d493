"""Rate limits per client identity: asks per minute (a leaky bucket) and asks at once.

The limits live in a JetStream KV bucket (``rag_limits``), one entry per identity,
changed only by compare-and-set, so every bridge replica and every socket of an
identity draw on the same limits: ``--replicas`` does not multiply anyone's quota. A
bridge that cannot read or write the bucket within ``bridge.limits_wait_s`` refuses
the ask with ``UNAVAILABLE``: limits fail closed, never open.

An entry holds the bucket's fill level at a time and the asks in flight, each as a
lease that ends ``lease_s`` after it began (the ask's own deadline plus a margin), so
the asks of a bridge that died are forgotten by themselves. ``remaining`` is how many
asks could start right now; ``reset_in_seconds`` is when ``remaining`` next grows by
one (0 when it is full), which is also when a refused ask may be retried. An ask
refused by the concurrent limit waits for one of the identity's asks to end, which
nobody can know in advance: its ``reset_in_seconds`` is an estimate, the moving
average of how long this bridge's recent asks took (:data:`FIRST_ASK_ESTIMATE_S`
before any has ended).
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from typing import Literal

import anyio
import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from ragbus.runtime import UnavailableError

__all__ = ("FIRST_ASK_ESTIMATE_S", "Denied", "LimitState", "RateLimits")

#: the estimated length of an ask before any has ended (a retrieval plus a short answer)
FIRST_ASK_ESTIMATE_S = 2.0
_EWMA_WEIGHT = 0.2  # of the newest ask: about the last ten asks count
#: compare-and-set attempts before an ask is refused as UNAVAILABLE (each loses only to
#: another replica's write for the same identity)
_CAS_TRIES = 50


class _Entry(msgspec.Struct, kw_only=True):
    """One identity's limits as stored: the leaky bucket's level at ``at`` (wall clock,
    seconds) and the asks in flight, each with when its lease ends."""

    level: float = 0.0
    at: float = 0.0
    asks: dict[str, float] = msgspec.field(default_factory=dict)


_decode = msgspec.json.Decoder(_Entry).decode
_encode = msgspec.json.Encoder().encode


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
    """The limits of every identity, in ``kv`` (shared by the bridge's replicas)."""

    def __init__(self, kv: KeyValue, per_minute: int, concurrent: int, *,
                 period_s: float = 60.0, lease_s: float = 120.0,
                 wait_s: float = 5.0) -> None:
        self.kv = kv
        self.per_minute = per_minute
        self.concurrent = concurrent
        self.period_s = period_s
        self.lease_s = lease_s
        self.wait_s = wait_s
        self.typical_ask_s = FIRST_ASK_ESTIMATE_S
        #: asks of this bridge that have ended and whose places are not yet written back,
        #: by key: not counted from the moment they end
        self._ended: dict[str, set[str]] = {}

    @staticmethod
    def key(identity: str) -> str:
        """An identity's key in the bucket (identities hold characters keys may not)."""
        return hashlib.sha256(identity.encode()).hexdigest()[:40]

    def _drain_rate(self) -> float:
        return self.per_minute / self.period_s

    def _now(self, key: str, entry: _Entry) -> _Entry:
        """The entry as of now: leaked, expired leases and this bridge's ended asks
        dropped."""
        now = time.time()
        ended = self._ended.get(key, set())
        level = max(0.0, entry.level - max(0.0, now - entry.at) * self._drain_rate())
        return _Entry(level=level, at=now, asks={
            a: end for a, end in entry.asks.items() if end > now and a not in ended})

    def _written(self, key: str, entry: _Entry) -> None:
        """``entry`` is stored: ended asks it no longer holds need no writing."""
        ended = self._ended.get(key)
        if ended is not None:
            ended.intersection_update(entry.asks)
            if not ended:
                del self._ended[key]

    def _state(self, entry: _Entry) -> LimitState:
        level = entry.level
        remaining = max(0, math.floor(self.per_minute - level + 1e-9))
        if level <= 0:
            reset = 0.0
        else:
            # remaining grows by one once the level has leaked below the next whole step
            reset = max(0.0, (level - (self.per_minute - remaining - 1)) / self._drain_rate())
        return LimitState(limit=self.per_minute, remaining=remaining,
                          reset_in_seconds=round(reset, 3), concurrent_limit=self.concurrent,
                          in_flight=len(entry.asks))

    async def _read(self, key: str) -> tuple[_Entry, int | None]:
        try:
            stored = await self.kv.get(key)
        except KeyNotFoundError:
            return _Entry(), None
        if not stored.value:  # deleted or expired
            return _Entry(), stored.revision
        try:
            return _decode(stored.value), stored.revision
        except msgspec.DecodeError:
            return _Entry(), stored.revision  # not ours to keep: written over

    async def _write(self, key: str, entry: _Entry, revision: int | None) -> bool:
        """Compare-and-set: False when another replica wrote first."""
        try:
            if revision is None:
                await self.kv.create(key, _encode(entry))
            else:
                await self.kv.update(key, _encode(entry), last=revision)
        except KeyWrongLastSequenceError:
            return False
        return True

    def _unreachable(self, exc: BaseException | None) -> UnavailableError:
        why = f" ({exc!r})" if exc is not None else ""
        return UnavailableError(
            f"the bridge cannot reach its rate limits (KV bucket {self.kv._name}) within "
            f"{self.wait_s:g}s{why}: retry shortly")

    async def state(self, identity: str) -> LimitState:
        """The identity's limits now; ``UnavailableError`` if the store does not answer."""
        try:
            with anyio.fail_after(self.wait_s):
                key = self.key(identity)
                entry, _ = await self._read(key)
        except Exception as exc:  # a timeout, a lost connection, a refusal: closed
            raise self._unreachable(exc) from exc
        return self._state(self._now(key, entry))

    async def admit(self, identity: str, ask: str) -> LimitState | Denied:
        """Take one ask (``ask`` names its lease) from the identity's limits, or say which
        limit refused it. ``UnavailableError`` if the store does not answer in time."""
        key = self.key(identity)
        try:
            with anyio.fail_after(self.wait_s):
                for _ in range(_CAS_TRIES):
                    stored, revision = await self._read(key)
                    entry = self._now(key, stored)
                    if len(entry.asks) >= self.concurrent:
                        return Denied("concurrent", self._state(entry), None,
                                      round(max(0.1, self.typical_ask_s), 3))
                    if entry.level + 1 > self.per_minute + 1e-9:
                        state = self._state(entry)
                        return Denied("per_minute", state,
                                      max(1, math.ceil(state.reset_in_seconds)))
                    entry.level += 1
                    entry.asks[ask] = entry.at + self.lease_s
                    if await self._write(key, entry, revision):
                        self._written(key, entry)
                        return self._state(entry)
        except Exception as exc:  # a timeout, a lost connection, a refusal: closed
            raise self._unreachable(exc) from exc
        raise self._unreachable(None)

    def end(self, identity: str, ask: str, took_s: float | None = None) -> None:
        """An admitted ask has ended (done, failed, cancelled or abandoned) after
        ``took_s`` seconds, which feeds the concurrent limit's retry estimate. Its place
        is free for this bridge at once; :meth:`flush` frees it for the others."""
        if took_s is not None:
            self.typical_ask_s += _EWMA_WEIGHT * (took_s - self.typical_ask_s)
        self._ended.setdefault(self.key(identity), set()).add(ask)

    async def flush(self, identity: str) -> None:
        """Write the places of the identity's ended asks back to the store. If it cannot
        be reached, the next admit writes them, or their leases end by themselves."""
        key = self.key(identity)
        with anyio.fail_after(self.wait_s):
            for _ in range(_CAS_TRIES):
                if not self._ended.get(key):
                    return
                stored, revision = await self._read(key)
                ended = self._ended.get(key, set())
                if not ended & stored.asks.keys():
                    self._written(key, stored)
                    return
                # the level and its time stay as they were
                kept = _Entry(level=stored.level, at=stored.at,
                              asks={a: e for a, e in stored.asks.items() if a not in ended})
                if await self._write(key, kept, revision):
                    self._written(key, kept)
                    return
