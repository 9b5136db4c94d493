"""The requester's side: send a request with a deadline, get a result or a typed error."""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator
from typing import TypeVar

import anyio
import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from ragbus.subjects import (
    ERROR_HEADER,
    Cancel,
    Cancelled,
    Done,
    ErrorCode,
    ErrorReply,
    Failed,
    Message,
    QueryEvent,
    Request,
    StreamRequest,
    Subjects,
    Token,
    deadline_after,
    now_ms,
)

from . import codec
from .errors import DeadlineExceededError, InternalError, UnavailableError, error_from_reply
from .handoff import HandOff, handoff_for

__all__ = ("ACCEPT_WAIT_S", "CANCEL_WAIT_S", "STREAM_GRACE_S", "Client", "EventStream",
           "decode_reply")

R = TypeVar("R", bound=Message)
TERMINAL = (Done, Failed, Cancelled)
#: past a streamed request's deadline, how long to wait for the actors' own DEADLINE_EXCEEDED
STREAM_GRACE_S = 0.5
#: after a cancel, how long to wait for the actors' ``cancelled`` before making one up
CANCEL_WAIT_S = 2.0
#: how long ``ragbus ask`` and the bridge wait for the retriever's ``Accepted`` (it comes
#: when a handler slot takes the query: milliseconds unless the retriever is saturated)
ACCEPT_WAIT_S = 5.0


def decode_reply(msg: Msg, reply: type[R]) -> R:
    """The reply as ``reply``, or the error it carries raised as its exception class."""
    if msg.headers and ERROR_HEADER in msg.headers:
        try:
            body = codec.decode(msg.data, ErrorReply)
        except msgspec.DecodeError:
            raise InternalError(f"undecodable error reply: {msg.data[:200]!r}") from None
        raise error_from_reply(body)
    try:
        result: R = codec.decode(msg.data, reply)
    except msgspec.DecodeError as exc:
        raise InternalError(f"reply is not a {reply.__name__}: {exc}") from None
    return result


class Client:
    """A thin requester over a connection; what ``ragbus`` commands and tests use."""

    def __init__(self, nc: NATS, subjects: Subjects | None = None, *,
                 default_timeout_s: float = 30.0) -> None:
        self.nc = nc
        self.subjects = subjects or Subjects()
        self.default_timeout_s = default_timeout_s

    def _with_deadline(self, message: Request, timeout: float | None) -> Request:
        if message.deadline is None:
            seconds = timeout if timeout is not None else self.default_timeout_s
            message = msgspec.structs.replace(message, deadline=deadline_after(seconds))
        return message

    async def request(self, subject: str, message: Request, reply: type[R], *,
                      timeout: float | None = None) -> R:
        """Send ``message`` and wait for its reply until its deadline."""
        message = self._with_deadline(message, timeout)
        assert message.deadline is not None
        # a little grace past the deadline, so the actor's DEADLINE_EXCEEDED reply can arrive
        wait = max(0.001, (message.deadline - now_ms()) / 1000) + 0.25
        try:
            answer = await self.nc.request(subject, codec.encode(message), timeout=wait)
        except NoRespondersError:
            raise UnavailableError(f"no actor is serving {subject}: is it running?") from None
        except (NatsTimeout, TimeoutError):
            raise DeadlineExceededError(f"no reply from {subject} within {wait:.2f}s") from None
        return decode_reply(answer, reply)

    async def cancel(self, request_id: str, reason: str = "") -> None:
        await self.nc.publish(self.subjects.cancel(request_id),
                              codec.encode(Cancel(request_id=request_id, reason=reason)))
        await self.nc.flush()

    def open_stream(self, subject: str, message: StreamRequest, *,
                    timeout: float | None = None, hint: str = "",
                    accept_within: float | None = None) -> EventStream:
        """A streamed request, sent on entering ``async with``; iterate it for its events.

        See :class:`EventStream` for what ends the iteration. ``hint`` completes the
        UNAVAILABLE message when nobody serves ``subject`` ("start the retriever").
        ``accept_within`` (seconds; for a subject whose endpoint sends ``Accepted``, such
        as ``<prefix>.query``): with no acceptance, error reply or event by then, the
        stream ends with ``failed`` UNAVAILABLE and the request is cancelled.
        """
        dated = self._with_deadline(message, timeout)
        assert isinstance(dated, StreamRequest)
        return EventStream(self, subject, dated, handoff_for(self.nc), hint,
                           accept_within=accept_within)

    async def stream(self, subject: str, message: StreamRequest, *,
                     timeout: float | None = None) -> AsyncIterator[QueryEvent]:
        """Send a streamed request and yield its events until a terminal one."""
        async with self.open_stream(subject, message, timeout=timeout) as events:
            async for event in events:
                yield event


class EventStream:
    """One streamed request's events, ending with exactly one terminal event.

    Nobody serves the subject: ``failed`` UNAVAILABLE at once (see ``runtime.handoff``).
    With ``accept_within``, nobody acknowledged it in that time (the instance NATS gave
    it to is dead or stuck): ``failed`` UNAVAILABLE, and the request is cancelled.
    Nothing terminal by the deadline plus :data:`STREAM_GRACE_S` (for the actors' own
    DEADLINE_EXCEEDED to arrive): ``failed`` DEADLINE_EXCEEDED, and the request is
    cancelled on the bus. After :meth:`cancel`, the actors' ``cancelled`` is awaited
    for :data:`CANCEL_WAIT_S`, then one is made up from what arrived. Leaving the
    ``async with`` before the end (an error, a closed socket) cancels the request.
    """

    def __init__(self, client: Client, subject: str, message: StreamRequest,
                 handoff: HandOff, hint: str, *, accept_within: float | None = None) -> None:
        assert message.deadline is not None
        self._client = client
        self._subject = subject
        self._message = message
        self._handoff = handoff
        self._hint = hint
        self._sub: Subscription | None = None
        self._send, self._received = anyio.create_memory_object_stream[bytes](math.inf)
        self._give_up_at = anyio.current_time() + (message.deadline - now_ms()) / 1000 \
            + STREAM_GRACE_S
        self._accept_within = accept_within
        self._accept_by = math.inf  # set on sending when an acceptance is awaited
        self._waiting: anyio.CancelScope | None = None
        self.accepted = accept_within is None
        self.cancelled_at: float | None = None
        self.finished = False
        self.text_length = 0
        self.tokens = 0

    @property
    def request_id(self) -> str:
        return self._message.request_id

    async def __aenter__(self) -> EventStream:
        nc = self._client.nc
        self._sub = await nc.subscribe(self._message.reply_to, cb=self._on_msg)
        if self._accept_within is not None:
            self._accept_by = anyio.current_time() + self._accept_within
        try:
            await self._handoff.send(
                self._subject, self._message, hint=self._hint,
                on_answered=None if self.accepted else self._on_accepted)
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        with anyio.CancelScope(shield=True):
            if not self.finished and self.cancelled_at is None:
                with contextlib.suppress(Exception):  # a closed connection cancels nothing
                    await self._cancel("the requester went away")
            await self._close()

    async def cancel(self, reason: str = "", *, wait_s: float = CANCEL_WAIT_S) -> None:
        """Ask every actor holding the request to stop; the stream ends with ``cancelled``
        (the actors', or one made up from what arrived if none comes within ``wait_s``)."""
        if self.finished or self.cancelled_at is not None:
            return
        self.cancelled_at = anyio.current_time()
        self._give_up_at = min(self._give_up_at, self.cancelled_at + wait_s)
        if self._waiting is not None:
            self._waiting.deadline = min(self._waiting.deadline, self._give_up_at)
        await self._cancel(reason)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> QueryEvent:
        while not self.finished:
            data: bytes | None = None
            wait_until = self._give_up_at if self.accepted else min(self._give_up_at,
                                                                     self._accept_by)
            with anyio.CancelScope(deadline=wait_until) as self._waiting:
                data = await self._received.receive()
            self._waiting = None
            if data is None:
                if (not self.accepted and self.cancelled_at is None
                        and anyio.current_time() < self._give_up_at):
                    return await self._not_accepted()
                return await self._give_up()
            try:
                event: QueryEvent = codec.decode(data, QueryEvent)
            except msgspec.DecodeError:
                continue  # an error reply or a stranger's message: the stream goes on
            self.accepted = True  # an event: somebody took it
            if isinstance(event, Token):
                self.tokens += 1
                self.text_length += len(event.text)
            self.finished = isinstance(event, TERMINAL)
            return event
        raise StopAsyncIteration

    def _on_accepted(self) -> None:
        self.accepted = True
        if self._waiting is not None:
            self._waiting.deadline = self._give_up_at

    async def _not_accepted(self) -> QueryEvent:
        self.finished = True
        with contextlib.suppress(Exception):  # it may yet arrive somewhere: stop it there
            await self._cancel("nobody accepted it in time")
        self.cancelled_at = anyio.current_time()  # so leaving does not cancel twice
        message = (f"nobody accepted the request on {self._subject} within "
                   f"{self._accept_within:g} s (the instance it reached is gone or stuck)")
        return Failed(request_id=self.request_id, code=ErrorCode.UNAVAILABLE,
                      message=message + (f": {self._hint}" if self._hint else ""),
                      trace_id=self._message.trace.trace_id if self._message.trace else None)

    async def _give_up(self) -> QueryEvent:
        self.finished = True
        if self.cancelled_at is not None:  # cancelled, and no actor confirmed in time
            return Cancelled(request_id=self.request_id, partial_text_length=self.text_length,
                             tokens_used=self.tokens)
        with contextlib.suppress(Exception):
            await self._cancel("the deadline passed")
        self.cancelled_at = anyio.current_time()  # so leaving does not cancel twice
        return Failed(request_id=self.request_id, code=ErrorCode.DEADLINE_EXCEEDED,
                      message="no answer before the deadline",
                      trace_id=self._message.trace.trace_id if self._message.trace else None)

    async def _cancel(self, reason: str) -> None:
        # no flush: the cancel goes out with the connection's next write, at once
        await self._client.nc.publish(self._client.subjects.cancel(self.request_id),
                                      codec.encode(Cancel(request_id=self.request_id,
                                                          reason=reason)))

    async def _on_msg(self, msg: Msg) -> None:
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._send.send_nowait(msg.data)

    async def _close(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._send.close()
        self._received.close()
