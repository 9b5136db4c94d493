"""The WebSocket protocol: JSON text frames, each an object tagged by ``type``.

Client frames are decoded into one tagged union, so a frame is either a known
request or an error frame back (the socket stays usable). Server frames relay a
query's events, tagged with the client's ``id`` for the ask, so several asks can
share one socket. See README.md ("WebSocket bridge") for examples.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from ragbus.subjects import (
    FEEDBACK_COMMENT_CHARS,
    ErrorCode,
    FileError,
    JobState,
    QueryFilters,
    Source,
)

__all__ = (
    "AskFrame",
    "AuthFrame",
    "CancelFrame",
    "CancelledFrame",
    "ClientFrame",
    "CloseCode",
    "DoneFrame",
    "ErrorFrame",
    "FailedFrame",
    "FeedbackFrame",
    "FeedbackRecordedFrame",
    "FollowFrame",
    "ForgetFrame",
    "ForgottenFrame",
    "JobFrame",
    "LimitsFrame",
    "ReadyFrame",
    "ServerFrame",
    "SourcesFrame",
    "StatusFrame",
    "StatusRequest",
    "TokenFrame",
    "decode_client_frame",
    "encode_frame",
    "loose_id",
)

AskId = Annotated[str, Meta(min_length=1, max_length=128)]
# a session id is chosen by the client; the bridge scopes it to the client's identity
SessionId = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_\-:.]+$")]


class CloseCode(enum.IntEnum):
    """Why the bridge closed a socket (the reason text says what to do)."""

    GOING_AWAY = 1001         # the bridge is stopping: reconnect
    MESSAGE_TOO_BIG = 1009    # a frame far over bridge.max_frame_bytes
    UNAUTHORIZED = 4401       # no, bad or expired credentials
    FORBIDDEN = 4403          # the page's origin is not in bridge.allowed_origins
    SLOW_READER = 4408        # the client did not read what it was sent in time


# -- client -> bridge --------------------------------------------------------------------


class _ClientFrame(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    pass


class AskFrame(_ClientFrame, frozen=True, kw_only=True, tag="ask"):
    """Ask a question; every event of the answer carries this ``id``."""

    id: AskId
    question: str
    session_id: SessionId | None = None
    filters: QueryFilters | None = None
    top_k: Annotated[int, Meta(ge=1, le=100)] = 5


class CancelFrame(_ClientFrame, frozen=True, kw_only=True, tag="cancel"):
    """Stop the ask with this ``id``; it ends with a ``cancelled`` frame."""

    id: AskId


class AuthFrame(_ClientFrame, frozen=True, kw_only=True, tag="auth"):
    """Credentials as the first frame, for clients that cannot set headers."""

    token: Annotated[str, Meta(min_length=1, max_length=8192)]


class StatusRequest(_ClientFrame, frozen=True, kw_only=True, tag="status"):
    """Ask for the current rate-limit numbers of this client's identity."""


class FeedbackFrame(_ClientFrame, frozen=True, kw_only=True, tag="feedback"):
    """Rate an answer this socket received (``request_id`` from its ``done``); ``id``
    tags the reply. Published on the bus as ``Feedback``, with the ask's session."""

    request_id: Annotated[str, Meta(min_length=1, max_length=128)]
    rating: Literal["up", "down"]
    comment: Annotated[str, Meta(max_length=FEEDBACK_COMMENT_CHARS)] | None = None
    id: AskId | None = None


class ForgetFrame(_ClientFrame, frozen=True, kw_only=True, tag="forget"):
    """Delete the conversation memory of ``session_id`` (as the socket's asks send it);
    the page sends it on "New conversation". Only the socket's own identity's session:
    the bridge scopes the id exactly as it does an ask's. ``id`` tags the reply."""

    session_id: SessionId
    id: AskId | None = None


class FollowFrame(_ClientFrame, frozen=True, kw_only=True, tag="follow"):
    """Send ``job`` frames with an ingest job's progress (the id ``POST /upload`` gave)
    until it has finished."""

    job_id: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")]


ClientFrame = (AskFrame | CancelFrame | AuthFrame | StatusRequest | FeedbackFrame
               | FollowFrame | ForgetFrame)

_client_decoder = msgspec.json.Decoder(ClientFrame)


class _AnyId(msgspec.Struct):
    """Enough of a frame to tag an error reply with the ask it was about."""

    id: Any = None


_loose_decoder = msgspec.json.Decoder(_AnyId)


def decode_client_frame(data: bytes) -> ClientFrame:
    """The frame, or :class:`msgspec.DecodeError` saying what is wrong with it."""
    frame: ClientFrame = _client_decoder.decode(data)
    return frame


def loose_id(data: bytes) -> str | None:
    """The ``id`` of a frame that did not decode, if one can be found."""
    try:
        found = _loose_decoder.decode(data).id
    except (msgspec.DecodeError, TypeError):
        return None
    return found if isinstance(found, str) and 0 < len(found) <= 128 else None


# -- bridge -> client --------------------------------------------------------------------


class _ServerFrame(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    pass


class LimitsFrame(msgspec.Struct, frozen=True, kw_only=True):
    """A client identity's rate-limit numbers (also the body of ``status``)."""

    limit: int
    remaining: int
    reset_in_seconds: float
    concurrent_limit: int
    in_flight: int


class ReadyFrame(_ServerFrame, frozen=True, kw_only=True, tag="ready"):
    """Authenticated: asks may be sent now."""

    identity: str
    method: str
    expires_at: int | None = None  # epoch seconds, for a JWT
    max_question_chars: int
    limits: LimitsFrame


class StatusFrame(_ServerFrame, frozen=True, kw_only=True, tag="status"):
    limit: int
    remaining: int
    reset_in_seconds: float
    concurrent_limit: int
    in_flight: int


class SourcesFrame(_ServerFrame, frozen=True, kw_only=True, tag="sources"):
    id: str
    sources: list[Source]
    missing_shards: list[str] = msgspec.field(default_factory=list)


class TokenFrame(_ServerFrame, frozen=True, kw_only=True, tag="token"):
    """A run of answer text. ``seq`` counts this ask's token frames from 0, no gaps;
    for a slow reader one frame may carry several tokens of the bus."""

    id: str
    seq: int
    text: str


class DoneFrame(_ServerFrame, frozen=True, kw_only=True, tag="done"):
    id: str
    request_id: str
    text_length: int = 0
    provider: str | None = None
    model: str | None = None
    usage: dict[str, int] = msgspec.field(default_factory=dict)
    timings_ms: dict[str, float] = msgspec.field(default_factory=dict)
    cache_hit: bool = False
    prompt_version: str | None = None
    stopped: str | None = None     # "repetition": the router cut a looping answer
    ttft_ms: float | None = None   # measured by the bridge: ask received -> first token
    total_ms: float = 0.0          # measured by the bridge: ask received -> done


class FeedbackRecordedFrame(_ServerFrame, frozen=True, kw_only=True, tag="feedback"):
    """The rating was kept (``known``: the audit trail had the answer it rates)."""

    request_id: str
    known: bool
    id: str | None = None


class ForgottenFrame(_ServerFrame, frozen=True, kw_only=True, tag="forgotten"):
    """The session's memory is deleted (``existed``: there was some; ``turns`` it held).
    Audit events of its asks are immutable and stay."""

    session_id: str
    existed: bool
    turns: int = 0
    id: str | None = None


class FailedFrame(_ServerFrame, frozen=True, kw_only=True, tag="failed"):
    id: str
    request_id: str
    code: ErrorCode
    message: str
    trace_id: str | None = None
    partial_text_length: int = 0


class CancelledFrame(_ServerFrame, frozen=True, kw_only=True, tag="cancelled"):
    id: str
    request_id: str
    partial_text_length: int = 0
    tokens_used: int = 0


class JobFrame(_ServerFrame, frozen=True, kw_only=True, tag="job"):
    """An ingest job's progress; the last one of a job has ``finished`` true."""

    job_id: str
    state: JobState
    progress: float
    files_done: int
    files_total: int
    docs_done: int
    chunks_done: int
    chunks_total: int
    errors: list[FileError]
    message: str
    finished: bool


class ErrorFrame(_ServerFrame, frozen=True, kw_only=True, tag="error"):
    """A frame was refused (malformed, too large, over a rate limit); the socket stays open.

    ``id`` names the ask it refused, when the frame had one.
    """

    code: ErrorCode
    message: str
    details: dict[str, Any] = msgspec.field(default_factory=dict)
    id: str | None = None


ServerFrame = (ReadyFrame | StatusFrame | SourcesFrame | TokenFrame | DoneFrame | FailedFrame
               | CancelledFrame | JobFrame | ErrorFrame | FeedbackRecordedFrame
               | ForgottenFrame)

_encoder = msgspec.json.Encoder()


def encode_frame(frame: ServerFrame) -> bytes:
    return _encoder.encode(frame)
