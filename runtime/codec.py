"""JSON on the wire, with one cached decoder per type (msgspec decoders are reusable)."""

from __future__ import annotations

from functools import cache
from typing import Any, TypeVar

import msgspec

from ragbus.subjects import SCHEMA_VERSION, Message, now_ms

from .errors import (
    BadRequestError,
    DeadlineExceededError,
    TooLargeError,
    UnsupportedVersionError,
)

__all__ = ("decode", "decoder", "encode", "read")

M = TypeVar("M", bound=Message)

_encoder = msgspec.json.Encoder()


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


@cache
def decoder(tp: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(tp)


def decode(data: bytes, tp: Any) -> Any:
    result = decoder(tp).decode(data)
    return result


def read(data: bytes, tp: type[M], *, limit: int, now: int | None = None,
         receiver: str = "receiving") -> M:
    """A received message as an actor takes it, or the coded error it is refused with.

    The one intake every endpoint shares, so whatever arrives ends as a ``tp`` or as a
    :class:`~ragbus.runtime.errors.RagbusError` the sender is told about, never as another
    exception: over ``limit`` bytes is TOO_LARGE (checked before any parsing), what does
    not decode as ``tp`` is BAD_REQUEST, a ``v`` newer than :data:`SCHEMA_VERSION` is
    UNSUPPORTED_VERSION, and a request whose own deadline has passed (at ``now``, epoch ms)
    is DEADLINE_EXCEEDED. A request without a deadline gets the receiver's default later.
    ``receiver`` names the actor in the version error (what to upgrade).
    """
    if len(data) > limit:
        raise TooLargeError(
            f"message is {len(data)} bytes; the limit is {limit} "
            "(runtime.max_message_bytes): send smaller batches",
            details={"size": len(data), "limit": limit})
    try:
        message: M = decoder(tp).decode(data)
    except msgspec.DecodeError as exc:  # ValidationError included
        raise BadRequestError(f"invalid {tp.__name__} message: {exc}",
                              details={"expected": tp.__name__}) from None
    if message.v > SCHEMA_VERSION:
        raise UnsupportedVersionError(
            f"schema version {message.v} is newer than this actor understands "
            f"({SCHEMA_VERSION}): upgrade the {receiver} actor",
            details={"v": message.v, "supported": SCHEMA_VERSION})
    deadline = getattr(message, "deadline", None)  # a Request's, or a message's own
    if isinstance(deadline, int) and deadline and (now_ms() if now is None else now) >= deadline:
        raise DeadlineExceededError("the request's deadline had passed when it arrived")
    return message
