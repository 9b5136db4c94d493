"""The envelope every message shares."""

from __future__ import annotations

import os
import time
from typing import Annotated

import msgspec

__all__ = (
    "MIN_REQUEST_ID_CHARS",
    "MIN_REQUEST_ID_DISTINCT",
    "SCHEMA_VERSION",
    "Message",
    "Name",
    "ReplySubject",
    "Request",
    "RequestId",
    "StreamRequest",
    "Trace",
    "deadline_after",
    "new_id",
    "now_ms",
)

#: Bumped when a message changes incompatibly; actors refuse newer versions with
#: UNSUPPORTED_VERSION instead of misreading them. Adding an optional field is compatible.
SCHEMA_VERSION = 1


#: A request id as subjects carry it (``<prefix>.cancel.<request_id>``; see
#: ``validate_token``). One that is not is refused with BAD_REQUEST when it is read,
#: rather than failing as INTERNAL deep in a handler, or being impossible to cancel.
#: (``(?![\s\S])`` is "the end of the text": ``$`` would let a trailing newline through.)
RequestId = Annotated[str, msgspec.Meta(min_length=1, max_length=128,
                                        pattern=r"^[A-Za-z0-9_\-:]+(?![\s\S])")]

#: A request's own id is also what cancels it: whoever may publish
#: ``<prefix>.cancel.<id>`` and knows the id can stop the work, so it must not be
#: guessable. Left out, it is :func:`new_id` (128 random bits: what the bridge,
#: ``ragbus ask`` and :class:`~ragbus.runtime.Client` send). One a client picks must have
#: at least :data:`MIN_REQUEST_ID_CHARS` characters, :data:`MIN_REQUEST_ID_DISTINCT` of
#: them different (a uuid4, a ULID or 32 hex digits pass; ``q1`` or
#: ``0000000000000001`` do not). That check is a floor, not a proof of randomness: a
#: client that picks its own ids must draw them at random.
MIN_REQUEST_ID_CHARS = 16
MIN_REQUEST_ID_DISTINCT = 8

#: A job, shard or collection name: it becomes a subject token and a KV key, so it is
#: refused when read unless it is both (KV keys allow no ``:``).
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128,
                                   pattern=r"^[A-Za-z0-9_\-]+(?![\s\S])")]

#: A subject a receiver can publish to: dot-separated tokens, no whitespace, no wildcard.
#: A ``reply_to`` that is not one could never be answered, so it is refused when read.
ReplySubject = Annotated[str, msgspec.Meta(min_length=1,
                                           pattern=r"^[^\s.*>]+(\.[^\s.*>]+)*(?![\s\S])")]


def new_id() -> str:
    """A fresh request, job or event id: 128 random bits as hex (safe inside a subject).

    Same entropy as a uuid4 without building a UUID object on the hot path.
    """
    return os.urandom(16).hex()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def deadline_after(seconds: float) -> int:
    """An absolute deadline (epoch ms) ``seconds`` from now."""
    return now_ms() + int(seconds * 1000)


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every message on the bus. JSON on the wire, so any NATS client can speak it."""

    v: int = SCHEMA_VERSION


class Trace(msgspec.Struct, frozen=True, kw_only=True):
    """W3C-style trace context carried across hops, so logs of one request join up."""

    trace_id: str = msgspec.field(default_factory=new_id)
    parent_id: str | None = None


class Request(Message, frozen=True, kw_only=True):
    """A unit of work: it can be cancelled by id and it always has a deadline.

    ``deadline`` is absolute (epoch milliseconds) so it survives hops without drift;
    when a publisher leaves it out the receiving actor applies its configured default,
    so nothing ever runs without one.
    """

    request_id: RequestId = msgspec.field(default_factory=new_id)
    deadline: int | None = None
    trace: Trace | None = None

    def __post_init__(self) -> None:
        # the alphabet is checked by the type when read; this, also when built here
        rid = self.request_id
        if len(rid) < MIN_REQUEST_ID_CHARS or len(set(rid)) < MIN_REQUEST_ID_DISTINCT:
            raise ValueError(
                f"request_id {rid[:32]!r} is guessable, and a request's id is "
                f"what cancels it: leave it out (one is made) or use a random one such as "
                f"a uuid4 (at least {MIN_REQUEST_ID_CHARS} characters, "
                f"{MIN_REQUEST_ID_DISTINCT} different)")


class StreamRequest(Request, frozen=True, kw_only=True):
    """A request whose results are events published to ``reply_to``.

    JetStream and multi-hop choreography do not keep a NATS reply subject, so the
    subject to answer on travels inside the message.
    """

    reply_to: ReplySubject
