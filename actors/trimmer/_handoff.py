"""Handing a message to the next actor of a choreography, and noticing when nobody takes it.

A plain publish to a subject nobody serves vanishes, and the client would wait
for its deadline. Published with a reply subject, the message makes the server
answer "no responders" (status 503) when there is no subscriber. Waiting for
that answer would delay every hand-off, so nobody waits: the hand-off returns at
once, and if a 503 arrives later for a pending hand-off, ``on_unserved`` tells
the requester. The next actor streams its events to the message's ``reply_to``,
never to this reply subject, so a served hand-off gets no reply here at all.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ragbus.subjects import new_id

__all__ = ("Handoffs", "Unserved")

_NO_RESPONDERS = "503"


@dataclass(frozen=True, slots=True)
class Unserved:
    """A hand-off nobody was subscribed to take."""

    subject: str
    request_id: str
    reply_to: str
    trace_id: str | None


class Handoffs:
    """Hand-offs of one actor, under one wildcard reply subscription."""

    def __init__(self, nc: NATS, on_unserved: Callable[[Unserved], Awaitable[None]], *,
                 window_s: float = 10.0) -> None:
        self._nc = nc
        self._on_unserved = on_unserved
        self._window_s = window_s  # a 503 comes within milliseconds; forget after this
        self._prefix = nc.new_inbox()
        self._pending: OrderedDict[str, tuple[float, Unserved]] = OrderedDict()
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(f"{self._prefix}.*", cb=self._on_reply)

    async def publish(self, subject: str, payload: bytes, *, request_id: str, reply_to: str,
                      trace_id: str | None, headers: dict[str, str] | None = None) -> None:
        now = time.monotonic()
        while self._pending:
            token, (expires, _) = next(iter(self._pending.items()))
            if expires > now:
                break
            del self._pending[token]
        token = new_id()
        self._pending[token] = (now + self._window_s,
                                Unserved(subject, request_id, reply_to, trace_id))
        await self._nc.publish(subject, payload, reply=f"{self._prefix}.{token}",
                               headers=headers)

    async def _on_reply(self, msg: Msg) -> None:
        if (msg.headers or {}).get("Status") != _NO_RESPONDERS:
            return  # an error reply: the next actor also sends it to reply_to
        entry = self._pending.pop(msg.subject.rsplit(".", 1)[-1], None)
        if entry is not None:
            await self._on_unserved(entry[1])
