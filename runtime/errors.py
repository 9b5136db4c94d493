"""Exceptions that carry a wire error code.

A handler raises one of these to answer with that code; a client receiving an
error reply gets the same class back from :func:`error_from_reply`. Anything
else a handler raises becomes INTERNAL, with the details kept in the logs.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ragbus.subjects import ErrorCode, ErrorReply

__all__ = (
    "BadRequest",
    "Cancelled",
    "DeadlineExceeded",
    "Forbidden",
    "InternalError",
    "NotFound",
    "Overloaded",
    "RagbusError",
    "RateLimited",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "UnsupportedVersion",
    "error_from_reply",
)


class RagbusError(Exception):
    """Base class: an error that can cross the bus as ``{code, message, details}``."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL

    def __init__(self, message: str, *, details: dict[str, Any] | None = None,
                 trace_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}
        self.trace_id = trace_id

    def to_reply(self, request_id: str | None = None) -> ErrorReply:
        return ErrorReply(code=self.code, message=self.message, details=self.details,
                          request_id=request_id, trace_id=self.trace_id)


class BadRequest(RagbusError):
    code = ErrorCode.BAD_REQUEST


class TooLarge(RagbusError):
    code = ErrorCode.TOO_LARGE


class UnsupportedVersion(RagbusError):
    code = ErrorCode.UNSUPPORTED_VERSION


class NotFound(RagbusError):
    code = ErrorCode.NOT_FOUND


class Unauthorized(RagbusError):
    code = ErrorCode.UNAUTHORIZED


class Forbidden(RagbusError):
    code = ErrorCode.FORBIDDEN


class DeadlineExceeded(RagbusError):
    code = ErrorCode.DEADLINE_EXCEEDED


class RateLimited(RagbusError):
    code = ErrorCode.RATE_LIMIT


class Overloaded(RagbusError):
    code = ErrorCode.OVERLOADED


class Unavailable(RagbusError):
    code = ErrorCode.UNAVAILABLE


class Cancelled(RagbusError):
    code = ErrorCode.CANCELLED


class InternalError(RagbusError):
    code = ErrorCode.INTERNAL


_BY_CODE: dict[ErrorCode, type[RagbusError]] = {
    cls.code: cls
    for cls in (BadRequest, TooLarge, UnsupportedVersion, NotFound, Unauthorized, Forbidden,
                DeadlineExceeded, RateLimited, Overloaded, Unavailable, Cancelled, InternalError)
}


def error_from_reply(reply: ErrorReply) -> RagbusError:
    """The exception a client raises for an error reply."""
    cls = _BY_CODE.get(reply.code, InternalError)
    return cls(reply.message, details=reply.details, trace_id=reply.trace_id)
