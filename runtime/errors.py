"""Exceptions that carry a wire error code.

A handler raises one of these to answer with that code; a client receiving an
error reply gets the same class back from :func:`error_from_reply`. Anything
else a handler raises becomes INTERNAL, with the details kept in the logs.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ragbus.subjects import ErrorCode, ErrorReply

__all__ = (
    "BadRequestError",
    "DeadlineExceededError",
    "ForbiddenError",
    "InternalError",
    "NotFoundError",
    "OverloadedError",
    "RagbusError",
    "RateLimitedError",
    "RequestCancelledError",
    "TooLargeError",
    "UnauthorizedError",
    "UnavailableError",
    "UnsupportedVersionError",
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


class BadRequestError(RagbusError):
    code = ErrorCode.BAD_REQUEST


class TooLargeError(RagbusError):
    code = ErrorCode.TOO_LARGE


class UnsupportedVersionError(RagbusError):
    code = ErrorCode.UNSUPPORTED_VERSION


class NotFoundError(RagbusError):
    code = ErrorCode.NOT_FOUND


class UnauthorizedError(RagbusError):
    code = ErrorCode.UNAUTHORIZED


class ForbiddenError(RagbusError):
    code = ErrorCode.FORBIDDEN


class DeadlineExceededError(RagbusError):
    code = ErrorCode.DEADLINE_EXCEEDED


class RateLimitedError(RagbusError):
    code = ErrorCode.RATE_LIMIT


class OverloadedError(RagbusError):
    code = ErrorCode.OVERLOADED


class UnavailableError(RagbusError):
    code = ErrorCode.UNAVAILABLE


class RequestCancelledError(RagbusError):
    """A ``Cancel`` named the request (not asyncio's ``CancelledError``, which is anyio's
    cancellation of a task)."""

    code = ErrorCode.CANCELLED


class InternalError(RagbusError):
    code = ErrorCode.INTERNAL


_BY_CODE: dict[ErrorCode, type[RagbusError]] = {
    cls.code: cls
    for cls in (BadRequestError, TooLargeError, UnsupportedVersionError, NotFoundError,
                UnauthorizedError, ForbiddenError, DeadlineExceededError, RateLimitedError,
                OverloadedError, UnavailableError, RequestCancelledError, InternalError)
}


def error_from_reply(reply: ErrorReply) -> RagbusError:
    """The exception a client raises for an error reply."""
    cls = _BY_CODE.get(reply.code, InternalError)
    return cls(reply.message, details=reply.details, trace_id=reply.trace_id)
