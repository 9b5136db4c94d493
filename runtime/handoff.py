"""Handing a streamed request to the next actor, and noticing at once when nobody takes it.

A query travels as a choreography: client → retriever → trimmer → router, each
hop a plain publish, the events going to the request's ``reply_to``. A publish to
a subject nobody serves vanishes, and the requester would wait for its deadline.
Published with a reply subject, the message makes the server answer "no
responders" (status 503) when no subscriber exists. Waiting for that answer would
delay every hop, so nobody waits: :meth:`HandOff.send` returns at once, and if a
503 arrives later for a pending hand-off, the requester gets a ``failed`` event
(``UNAVAILABLE``) on its ``reply_to`` right away. The next actor streams to
``reply_to``, never to this reply subject, so a served hand-off gets nothing here.

A first hop that acknowledges what it takes (``endpoint(accept=True)``: the
retriever's query) answers the reply subject with ``Accepted``; a requester that
wants to know (``Client.open_stream(accept_within=...)``) passes ``on_answered``,
called when that answer (or an error reply) arrives.

Every actor has one (``Context.hand_off``), and every connection one for its
requesters (``Client.open_stream``), each under one wildcard subscription.
"""

from __future__ import annotations

import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ragbus.subjects import ErrorCode, Failed, StreamRequest, new_id

from . import codec

__all__ = ("HandOff", "Unserved", "handoff_for")

_NO_RESPONDERS = "503"


@dataclass(frozen=True, slots=True)
class Unserved:
    """A hand-off nobody was subscribed to take."""

    subject: str
    request_id: str
    reply_to: str
    trace_id: str | None
    hint: str
    on_answered: Callable[[], None] | None = None


class HandOff:
    """The hand-offs of one connection owner (an actor or a client)."""

    def __init__(self, nc: NATS, *, on_unserved: Callable[[Unserved], None] | None = None,
                 window_s: float = 10.0) -> None:
        self._nc = nc
        self._on_unserved = on_unserved
        self._window_s = window_s  # a 503 comes within milliseconds; forget after this
        self._prefix = ""
        self._pending: OrderedDict[str, tuple[float, Unserved]] = OrderedDict()
        self._sub: Subscription | None = None
        self._lock = anyio.Lock()

    async def send(self, subject: str, message: StreamRequest, *,
                   headers: dict[str, str] | None = None, hint: str = "",
                   on_answered: Callable[[], None] | None = None) -> None:
        """Publish ``message`` to ``subject``; if nobody serves it, its ``reply_to`` gets
        ``failed`` UNAVAILABLE (``hint`` says what to start). ``on_answered`` is called
        when the subject's server answers the reply subject (``Accepted``, or an error
        reply)."""
        if self._sub is None:
            async with self._lock:
                if self._sub is None:
                    self._prefix = self._nc.new_inbox()
                    self._sub = await self._nc.subscribe(f"{self._prefix}.*",
                                                         cb=self._on_reply)
        now = time.monotonic()
        while self._pending:
            token, (expires, _) = next(iter(self._pending.items()))
            if expires > now:
                break
            del self._pending[token]
        token = new_id()
        trace_id = message.trace.trace_id if message.trace is not None else None
        self._pending[token] = (now + self._window_s, Unserved(
            subject, message.request_id, message.reply_to, trace_id, hint, on_answered))
        await self._nc.publish(subject, codec.encode(message), reply=f"{self._prefix}.{token}",
                               headers=headers)

    async def close(self) -> None:
        sub, self._sub = self._sub, None
        self._pending.clear()
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # the connection may be closed already
                structlog.get_logger().debug("handoff.unsubscribe_failed", error=str(exc))

    async def _on_reply(self, msg: Msg) -> None:
        token = msg.subject.rsplit(".", 1)[-1]
        if (msg.headers or {}).get("Status") != _NO_RESPONDERS:
            # Accepted, or an error reply (the next actor also sends it to reply_to)
            entry = self._pending.get(token)
            if entry is not None and entry[1].on_answered is not None:
                del self._pending[token]
                entry[1].on_answered()
            return
        entry = self._pending.pop(token, None)
        if entry is None:
            return
        lost = entry[1]
        if self._on_unserved is not None:
            self._on_unserved(lost)
        message = f"no actor is serving {lost.subject}" + (f": {lost.hint}" if lost.hint else "")
        try:
            await self._nc.publish(lost.reply_to, codec.encode(Failed(
                request_id=lost.request_id, code=ErrorCode.UNAVAILABLE, message=message,
                trace_id=lost.trace_id)))
        except Exception as exc:  # the requester's inbox may be unusable; nothing to tell
            structlog.get_logger().warning("handoff.unserved_undeliverable",
                                           subject=lost.reply_to, error=str(exc))


_shared: weakref.WeakKeyDictionary[NATS, HandOff] = weakref.WeakKeyDictionary()


def handoff_for(nc: NATS) -> HandOff:
    """The hand-offs of a connection's plain requesters (``Client``), one wildcard
    subscription per connection however many clients it carries."""
    found = _shared.get(nc)
    if found is None:
        found = _shared[nc] = HandOff(nc)
    return found
