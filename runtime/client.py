"""The requester's side: send a request with a deadline, get a result or a typed error."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from ragbus.subjects import (
    ERROR_HEADER,
    Cancel,
    Cancelled,
    Done,
    ErrorReply,
    Failed,
    Message,
    QueryEvent,
    Request,
    StreamRequest,
    Subjects,
    deadline_after,
    now_ms,
)

from . import codec
from .errors import DeadlineExceeded, InternalError, Unavailable, error_from_reply

__all__ = ("Client", "decode_reply")

R = TypeVar("R", bound=Message)
TERMINAL = (Done, Failed, Cancelled)


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
            raise Unavailable(f"no actor is serving {subject}: is it running?") from None
        except (NatsTimeout, TimeoutError):
            raise DeadlineExceeded(f"no reply from {subject} within {wait:.2f}s") from None
        return decode_reply(answer, reply)

    async def cancel(self, request_id: str, reason: str = "") -> None:
        await self.nc.publish(self.subjects.cancel(request_id),
                              codec.encode(Cancel(request_id=request_id, reason=reason)))
        await self.nc.flush()

    async def stream(self, subject: str, message: StreamRequest, *,
                     timeout: float | None = None) -> AsyncIterator[QueryEvent]:
        """Publish a streamed request and yield its events until a terminal one.

        If nothing terminal arrives by the deadline (plus a little grace) a
        ``Failed`` with DEADLINE_EXCEEDED is yielded: the caller never waits forever.
        """
        dated = self._with_deadline(message, timeout)
        assert isinstance(dated, StreamRequest)
        message = dated
        assert message.deadline is not None
        sub = await self.nc.subscribe(message.reply_to)
        try:
            await self.nc.publish(subject, codec.encode(message))
            while True:
                left = (message.deadline - now_ms()) / 1000 + 0.25
                try:
                    msg = await sub.next_msg(timeout=max(0.001, left))
                except NatsTimeout:
                    yield Failed(request_id=message.request_id,
                                 code=DeadlineExceeded.code,
                                 message="no answer before the deadline")
                    return
                event: QueryEvent = codec.decode(msg.data, QueryEvent)
                yield event
                if isinstance(event, TERMINAL):
                    return
        finally:
            await sub.unsubscribe()
