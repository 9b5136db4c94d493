"""Conversation sessions: what the context-trimmer remembers of one, and forgetting it.

The trimmer keeps each session's last turns and a brief of the older ones (its
memory, a KV entry per session). These requests let an operator (``ragbus
session``) or the bridge, for the socket's own session only, read that memory
and delete it. Deleting removes the memory and nothing else: audit events are
immutable and keep what they recorded (a hash of each question, or the text
with ``audit.text = full``), and backups taken before keep their copy.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from ._base import Message, Request

__all__ = (
    "SESSION_ID_CHARS",
    "SessionDelete",
    "SessionDeleted",
    "SessionGet",
    "SessionInfo",
    "SessionList",
    "SessionListed",
    "SessionSummary",
    "SessionTurn",
)

#: the longest session id accepted (the bridge's are ``<identity>:<the page's id>``)
SESSION_ID_CHARS = 512

SessionId = Annotated[str, Meta(min_length=1, max_length=SESSION_ID_CHARS)]


class SessionGet(Request, frozen=True, kw_only=True):
    """Ask for one session's memory; NOT_FOUND if none is kept (never was, expired or
    deleted)."""

    session_id: SessionId


class SessionDelete(Request, frozen=True, kw_only=True):
    """Forget one session's memory (its turns and brief). Deleting a session with no
    memory is not an error: the reply says ``existed=False``."""

    session_id: SessionId


class SessionList(Request, frozen=True, kw_only=True):
    """The sessions with memory, most recently updated first."""

    limit: Annotated[int, Meta(ge=1, le=10_000)] = 100
    offset: Annotated[int, Meta(ge=0)] = 0


class SessionTurn(msgspec.Struct, frozen=True, kw_only=True):
    request_id: str
    question: str
    answer: str
    at: int  # epoch ms


class SessionInfo(Message, frozen=True, kw_only=True):
    """One session's memory as the trimmer keeps it: the recent ``turns`` (oldest first)
    and the ``brief`` that the ``folded`` older turns were summarized into (by an LLM
    or by the fallback that cuts the transcript: ``brief_source``)."""

    request_id: str
    session_id: str
    turns: list[SessionTurn] = msgspec.field(default_factory=list)
    brief: str | None = None
    brief_source: Literal["llm", "fallback"] | None = None
    folded: int = 0
    updated_at: int = 0
    expires_at: int | None = None  # epoch ms: trimmer.memory_ttl_s after the last turn


class SessionSummary(msgspec.Struct, frozen=True, kw_only=True):
    session_id: str
    turns: int
    folded: int
    has_brief: bool
    updated_at: int


class SessionListed(Message, frozen=True, kw_only=True):
    request_id: str
    sessions: list[SessionSummary]
    total: int


class SessionDeleted(Message, frozen=True, kw_only=True):
    """The session's memory is gone (``existed``: there was some to delete)."""

    request_id: str
    session_id: str
    existed: bool
    turns: int = 0  # turns that were kept (not counting those folded into the brief)
