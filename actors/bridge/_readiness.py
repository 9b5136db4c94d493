"""``/readyz``: connected to NATS, and the actors a query needs answer ``$SRV.PING``.

A probe is one ping on the bus; answers are cached for a second so a load
balancer polling ``/readyz`` cannot turn into a flood of pings, and concurrent
probes share one ping.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio
from nats.aio.client import Client as NATS

from ragbus.runtime import discover

__all__ = ("Readiness", "ReadinessProbe")


@dataclass(frozen=True, slots=True)
class Readiness:
    nats_connected: bool
    actors: dict[str, int] = field(default_factory=dict)  # name -> instances that answered
    missing: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return self.nats_connected and not self.missing

    def to_json(self) -> bytes:
        return json.dumps({
            "ready": self.ready,
            "nats": "connected" if self.nats_connected else "disconnected",
            "actors": self.actors,
            "missing": self.missing,
        }).encode()


class ReadinessProbe:
    def __init__(self, required: Sequence[str], *, wait_s: float = 0.5,
                 cache_s: float = 1.0) -> None:
        self.required = list(dict.fromkeys(required))
        self.wait_s = wait_s
        self.cache_s = cache_s
        self._last: tuple[float, Readiness] | None = None
        self._lock = anyio.Lock()

    async def check(self, nc: NATS | None) -> Readiness:
        async with self._lock:
            now = time.monotonic()
            if self._last is not None and now - self._last[0] < self.cache_s:
                return self._last[1]
            result = await self._probe(nc)
            self._last = (time.monotonic(), result)
            return result

    async def _probe(self, nc: NATS | None) -> Readiness:
        if nc is None or not nc.is_connected:
            return Readiness(False, missing=list(self.required))
        if not self.required:
            return Readiness(True)
        # every instance answers; stop early once each required actor has
        answers = await discover(nc, "PING", wait_s=self.wait_s, until=lambda found: {
            a.get("name") for a in found} >= set(self.required))
        found: dict[str, int] = {}
        for answer in answers:
            name = answer.get("name")
            if isinstance(name, str):
                found[name] = found.get(name, 0) + 1
        return Readiness(nc.is_connected, dict(sorted(found.items())),
                         [r for r in self.required if r not in found])
