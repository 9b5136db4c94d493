"""The NATS micro-service discovery protocol ($SRV.PING / INFO / STATS).

nats-py ships ``nats.micro``, but its endpoint handlers run one at a time and it
times the callback, not the work; the actor spawns a task per message, so it
answers the protocol itself and reuses nats.micro's response types for the format.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.micro.service import (
    EndpointInfo,
    EndpointStats,
    ServiceInfo,
    ServicePing,
    ServiceStats,
)

__all__ = ("Discovery", "EndpointCounters", "discover", "wait_for_instances")


@dataclass(slots=True)
class EndpointCounters:
    name: str
    subject: str
    queue_group: str
    num_requests: int = 0
    num_errors: int = 0
    last_error: str = ""
    processing_ns: int = 0

    def record(self, elapsed_ns: int, error: str | None) -> None:
        self.num_requests += 1
        self.processing_ns += elapsed_ns
        if error is not None:
            self.num_errors += 1
            self.last_error = error


@dataclass(slots=True)
class Discovery:
    nc: NATS
    name: str
    id: str
    version: str
    description: str
    endpoints: Callable[[], list[EndpointCounters]]
    metadata: dict[str, str] = field(default_factory=dict)
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    _subs: list[Subscription] = field(default_factory=list)

    async def start(self) -> None:
        for verb, handler in (("PING", self._ping), ("INFO", self._info), ("STATS", self._stats)):
            for subject in (f"$SRV.{verb}", f"$SRV.{verb}.{self.name}",
                            f"$SRV.{verb}.{self.name}.{self.id}"):
                self._subs.append(await self.nc.subscribe(subject, cb=handler))

    async def stop(self) -> None:
        for sub in self._subs:
            # the connection may already be closing; then there is nothing to undo
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()

    async def _reply(self, msg: Msg, body: dict[str, object]) -> None:
        if msg.reply:
            await self.nc.publish(msg.reply, json.dumps(body).encode())

    async def _ping(self, msg: Msg) -> None:
        ping = ServicePing(id=self.id, name=self.name, version=self.version,
                           metadata=self.metadata)
        await self._reply(msg, ping.to_dict())

    async def _info(self, msg: Msg) -> None:
        info = ServiceInfo(
            id=self.id, name=self.name, version=self.version, description=self.description,
            metadata=self.metadata,
            endpoints=[EndpointInfo(name=e.name, subject=e.subject, queue_group=e.queue_group,
                                    metadata={}) for e in self.endpoints()],
        )
        await self._reply(msg, info.to_dict())

    async def _stats(self, msg: Msg) -> None:
        stats = ServiceStats(
            id=self.id, name=self.name, version=self.version, metadata=self.metadata,
            started=self.started,
            endpoints=[
                EndpointStats(
                    name=e.name, subject=e.subject, queue_group=e.queue_group,
                    num_requests=e.num_requests, num_errors=e.num_errors,
                    last_error=e.last_error, processing_time=e.processing_ns,
                    average_processing_time=(e.processing_ns // e.num_requests
                                             if e.num_requests else 0),
                )
                for e in self.endpoints()
            ],
        )
        await self._reply(msg, stats.to_dict())


# -- asking: who is out there ----------------------------------------------------------
async def discover(nc: NATS, verb: str = "STATS", *, wait_s: float = 0.5,
                   until: Callable[[list[dict[str, Any]]], bool] | None = None,
                   ) -> list[dict[str, Any]]:
    """Every answer to ``$SRV.<verb>`` within ``wait_s`` (replies arrive from each instance),
    or those in by the time ``until(answers)`` holds."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    answers: list[dict[str, Any]] = []
    try:
        await nc.publish(f"$SRV.{verb}", b"", reply=inbox)
        await nc.flush()
        with anyio.move_on_after(wait_s):
            async for msg in sub.messages:
                try:
                    answer = json.loads(msg.data)
                except ValueError:
                    continue
                if isinstance(answer, dict):
                    answers.append(answer)
                    if until is not None and until(answers):
                        break
    finally:
        await sub.unsubscribe()
    return sorted(answers, key=lambda a: (a.get("name", ""), a.get("id", "")))


async def wait_for_instances(nc: NATS, name: str, count: int, *,
                             timeout_s: float = 60.0) -> set[str]:
    """The ids of actor ``name``'s instances, once exactly ``count`` answer a ping.

    For whoever starts processes and must know they serve before sending work
    (a replica that has not subscribed yet would leave the others all the load).
    """
    with anyio.fail_after(timeout_s):
        while True:
            found = {str(s["id"]) for s in await discover(nc, "PING", wait_s=0.3)
                     if s.get("name") == name}
            if len(found) == count:
                return found
            await anyio.sleep(0.2)
