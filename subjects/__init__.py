"""The wire contract: every subject name and every message type, declared once."""

from ._base import (
    SCHEMA_VERSION,
    Message,
    Request,
    StreamRequest,
    Trace,
    deadline_after,
    new_id,
    now_ms,
)
from ._control import Cancel
from ._errors import ERROR_HEADER, ErrorCode, ErrorReply
from ._events import Cancelled, Done, Failed, QueryEvent, Source, Sources, Token
from ._names import DEFAULT_PREFIX, Subjects, validate_token

__all__ = (
    "DEFAULT_PREFIX",
    "ERROR_HEADER",
    "SCHEMA_VERSION",
    "Cancel",
    "Cancelled",
    "Done",
    "ErrorCode",
    "ErrorReply",
    "Failed",
    "Message",
    "QueryEvent",
    "Request",
    "Source",
    "Sources",
    "StreamRequest",
    "Subjects",
    "Token",
    "Trace",
    "deadline_after",
    "new_id",
    "now_ms",
    "validate_token",
)
