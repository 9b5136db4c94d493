"""The error vocabulary shared by every actor and every client."""

from __future__ import annotations

import enum
from typing import Any

import msgspec

from ._base import Message

__all__ = ("ERROR_HEADER", "ErrorCode", "ErrorReply")

#: Header set on every error reply, so a client can tell an error from a result
#: before decoding the body.
ERROR_HEADER = "Ragbus-Error"


class ErrorCode(enum.StrEnum):
    """Stable machine-readable codes; clients switch on these, never on messages."""

    BAD_REQUEST = "BAD_REQUEST"
    TOO_LARGE = "TOO_LARGE"
    UNSUPPORTED_VERSION = "UNSUPPORTED_VERSION"
    NOT_FOUND = "NOT_FOUND"
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    RATE_LIMIT = "RATE_LIMIT"
    OVERLOADED = "OVERLOADED"
    UNAVAILABLE = "UNAVAILABLE"
    CANCELLED = "CANCELLED"
    INTERNAL = "INTERNAL"


class ErrorReply(Message, frozen=True, kw_only=True, tag="error", tag_field="type"):
    """The body of every error reply: ``{"type": "error", "code", "message", "details"}``."""

    code: ErrorCode
    message: str
    details: dict[str, Any] = msgspec.field(default_factory=dict)
    request_id: str | None = None
    trace_id: str | None = None
