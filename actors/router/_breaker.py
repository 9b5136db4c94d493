"""Circuit breakers shared by every router replica through the bus and a KV bucket.

closed -> open on a 429 (for its Retry-After, else the rate-limit cooldown) or
on N consecutive failures (for the failure cooldown); once the cooldown is over
one request, on one replica, is let through as a probe (half-open); its success
closes the breaker, its failure opens it again.

Every transition is written to the KV bucket and published on
``<prefix>.breaker.<provider>``; every replica applies what it hears, so one
replica's 429 stops all of them. Transitions carry their KV revision and a
replica ignores anything not newer than what it holds, so late or repeated
messages cannot move a breaker backwards. The half-open claim is a KV
compare-and-set on that revision, so across all replicas exactly one probe goes
out; a claim whose probe never reports back expires after the probe timeout.
Consecutive-failure counts are per replica: a shared count would need a write
per failure, and N failures seen by one replica are evidence enough.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from prometheus_client import Counter, Gauge

from ragbus.runtime import Metrics, codec, ensure_kv, kv_entries
from ragbus.subjects import (
    BreakerState,
    BreakerTransition,
    Subjects,
    breakers_bucket,
    now_ms,
    stored_transition,
)

from ._errors import ProviderError, ProviderRateLimitedError

__all__ = ("Admission", "BreakerBoard", "BreakerPolicy")

_GAUGE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failure_threshold: int = 5
    failure_cooldown_s: float = 300.0
    rate_limit_cooldown_s: float = 60.0
    probe_timeout_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Admission:
    """Whether a request may call the provider; ``probe`` if it is the half-open probe."""

    allowed: bool
    probe: bool = False
    reason: str = ""


@dataclass(slots=True)
class _Breaker:
    state: BreakerState = BreakerState.CLOSED
    until: int | None = None
    revision: int = 0
    replica: str = ""
    failures: int = 0


class BreakerBoard:
    """This replica's view of every provider's breaker, kept in step with the others."""

    def __init__(self, nc: NATS, subjects: Subjects, replica: str, policy: BreakerPolicy, *,
                 metrics: Metrics, actor: str = "router", log: Any = None,
                 on_transition: Callable[[BreakerTransition], Awaitable[None]] | None = None,
                 replicas: int = 1) -> None:
        self._on_transition = on_transition
        self._replicas = replicas
        self.nc = nc
        self.subjects = subjects
        self.replica = replica
        self.policy = policy
        self.log = log
        self.actor = actor
        self._breakers: dict[str, _Breaker] = {}
        self._changed = anyio.Event()
        self._kv: KeyValue | None = None
        self._sub: Subscription | None = None
        self._gauge = metrics.get(Gauge, "ragbus_breaker_state",
                                  "Circuit breaker state (0 closed, 1 half-open, 2 open)",
                                  ["actor", "provider"])
        self._opens = metrics.get(Counter, "ragbus_breaker_opens",
                                  "Breakers opened, by the replica that opened them",
                                  ["actor", "provider", "reason"])
        self._probes = metrics.get(Counter, "ragbus_breaker_probes",
                                   "Half-open probes let through", ["actor", "provider"])

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self, providers: list[str]) -> None:
        """Listen first, then read the bucket: nothing published in between is missed."""
        for name in providers:
            self._gauge.labels(self.actor, name).set(0)
        self._sub = await self.nc.subscribe(self.subjects.breaker_all, cb=self._on_msg)
        try:
            self._kv = await ensure_kv(self.nc, breakers_bucket(self.subjects),
                                       replicas=self._replicas)
            for entry in await kv_entries(self._kv):
                stored = stored_transition(entry.value, entry.revision)
                if stored is not None:
                    self.apply(stored)
        except Exception as exc:  # no JetStream: breakers still work, shared by messages only
            self._warn("breaker.kv_unavailable", error=str(exc))

    async def stop(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception as exc:  # a closed connection has nothing left to deliver
                self._warn("breaker.unsubscribe_failed", error=str(exc))
            self._sub = None

    # -- reading -----------------------------------------------------------------------
    def state(self, provider: str) -> BreakerState:
        return self._get(provider).state

    def snapshot(self) -> dict[str, tuple[BreakerState, int | None]]:
        return {name: (b.state, b.until) for name, b in self._breakers.items()}

    async def wait_for(self, provider: str, state: BreakerState) -> None:
        """Return once this replica holds ``state`` for ``provider`` (callers bound the wait)."""
        while True:
            changed = self._changed
            if self.state(provider) == state:
                return
            await changed.wait()

    # -- applying what is heard --------------------------------------------------------
    def _get(self, provider: str) -> _Breaker:
        breaker = self._breakers.get(provider)
        if breaker is None:
            breaker = self._breakers[provider] = _Breaker()
        return breaker

    def apply(self, t: BreakerTransition) -> bool:
        """Take a transition if it is newer than what this replica holds."""
        b = self._get(t.provider)
        if t.revision and t.revision <= b.revision:
            return False
        if t.state != b.state and self.log is not None:
            self.log.info("breaker.transition", provider=t.provider, state=t.state.value,
                          reason=t.reason, by=t.replica, until=t.until)
        b.state, b.until, b.replica = t.state, t.until, t.replica
        b.revision = max(b.revision, t.revision)
        if t.state == BreakerState.CLOSED:
            b.failures = 0
        self._gauge.labels(self.actor, t.provider).set(_GAUGE[t.state])
        self._changed.set()
        self._changed = anyio.Event()
        return True

    async def _on_msg(self, msg: Msg) -> None:
        try:
            t = codec.decode(msg.data, BreakerTransition)
        except msgspec.DecodeError:
            self._warn("breaker.bad_message", subject=msg.subject)
            return
        self.apply(t)

    # -- deciding ----------------------------------------------------------------------
    async def admit(self, provider: str) -> Admission:
        b = self._get(provider)
        if b.state == BreakerState.CLOSED:
            return Admission(True)
        now = now_ms()
        if b.until is not None and now < b.until:
            what = "open" if b.state == BreakerState.OPEN else "half-open (a probe is out)"
            return Admission(False, reason=f"breaker {what} for {(b.until - now) / 1000:.1f}s")
        claim = BreakerTransition(provider=provider, state=BreakerState.HALF_OPEN,
                                  reason="probe", at=now, replica=self.replica,
                                  until=now + int(self.policy.probe_timeout_s * 1000))
        if not await self._write(claim, last=b.revision):
            return Admission(False, reason="breaker half-open: another replica is probing")
        self._probes.labels(self.actor, provider).inc()
        return Admission(True, probe=True)

    async def success(self, provider: str, admission: Admission) -> None:
        b = self._get(provider)
        b.failures = 0
        if admission.probe and b.state == BreakerState.HALF_OPEN and b.replica == self.replica:
            await self._write(BreakerTransition(provider=provider, state=BreakerState.CLOSED,
                                                reason="probe_succeeded", at=now_ms(),
                                                replica=self.replica))

    async def failure(self, provider: str, error: ProviderError, admission: Admission) -> None:
        b = self._get(provider)
        if isinstance(error, ProviderRateLimitedError):
            cooldown = error.retry_after_s
            if cooldown is None:
                cooldown = self.policy.rate_limit_cooldown_s
            await self._open(provider, "rate_limited", cooldown, error)
            return
        if not error.counts:
            # the provider answered; only this request was at fault
            await self.success(provider, admission)
            return
        b.failures += 1
        if admission.probe:
            await self._open(provider, "probe_failed", self.policy.failure_cooldown_s, error)
        elif b.failures >= self.policy.failure_threshold and b.state == BreakerState.CLOSED:
            await self._open(provider, "failures", self.policy.failure_cooldown_s, error)

    async def _open(self, provider: str, reason: str, cooldown_s: float,
                    error: ProviderError) -> None:
        now = now_ms()
        t = BreakerTransition(provider=provider, state=BreakerState.OPEN, reason=reason, at=now,
                              until=now + int(cooldown_s * 1000), replica=self.replica,
                              failures=self._get(provider).failures, message=error.message[:300])
        await self._write(t)
        self._opens.labels(self.actor, provider, reason).inc()

    async def _write(self, t: BreakerTransition, *, last: int | None = None) -> bool:
        """Store, apply, publish. With ``last``: only if the stored revision is still
        ``last`` (the probe claim); returns False when another replica got there first."""
        revision = 0
        if self._kv is not None:
            data = codec.encode(t)
            try:
                if last is None:
                    revision = await self._kv.put(t.provider, data)
                elif last == 0:
                    revision = await self._kv.create(t.provider, data)
                else:
                    revision = await self._kv.update(t.provider, data, last=last)
            except KeyWrongLastSequenceError:
                return False
            except Exception as exc:  # JetStream trouble: still act locally and tell others
                self._warn("breaker.kv_write_failed", provider=t.provider, error=str(exc))
        t = msgspec.structs.replace(t, revision=revision)
        self.apply(t)
        try:
            await self.nc.publish(self.subjects.breaker(t.provider), codec.encode(t))
        except Exception as exc:
            self._warn("breaker.publish_failed", provider=t.provider, error=str(exc))
        if self._on_transition is not None:  # only the replica that made the move reports it
            await self._on_transition(t)
        return True

    def _warn(self, event: str, **fields: Any) -> None:
        if self.log is not None:
            self.log.warning(event, **fields)
