"""The hand-off from the context-trimmer to the router: a budgeted prompt to answer."""

from __future__ import annotations

from typing import Literal

import msgspec

from ._base import Message, StreamRequest

__all__ = ("ChatTurn", "ContextNode", "Generate", "TrimInfo", "TurnDone")


class ContextNode(msgspec.Struct, frozen=True, kw_only=True):
    """One piece of retrieved context, after trimming and compression."""

    chunk_id: str
    doc_id: str
    text: str
    score: float
    title: str | None = None
    source: str | None = None


class ChatTurn(msgspec.Struct, frozen=True, kw_only=True):
    role: Literal["system", "user", "assistant"]
    content: str


class TrimInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What trimming did, reported with the context and into metrics."""

    nodes_before: int = 0
    nodes_after: int = 0
    tokens_used: int = 0
    tokens_available: int = 0
    tokens_removed: int = 0
    context_tokens_before: int = 0
    context_tokens_after: int = 0
    compressed: bool = False
    mode: Literal["compact", "tree_summarize"] = "compact"
    memory_turns: int = 0
    memory_tokens: int = 0
    # who wrote the session's brief: an LLM through the router, the documented fallback
    # (the conversation's most recent text, cut to size), "unknown" for a brief stored
    # before this was recorded; None: no brief was sent
    brief_source: Literal["llm", "fallback", "unknown"] | None = None


class Generate(StreamRequest, frozen=True, kw_only=True):
    """Answer ``question`` from ``context``; stream ``Token`` then ``Done`` to ``reply_to``.

    ``history`` and ``brief`` are the session's conversation memory, already within
    their budget. ``prompt_tokens`` is the trimmer's cl100k count of everything
    here, which size-based routing uses. ``llm_only`` asks for an LLM's answer or
    none: the router skips its extractive provider and fails with UNAVAILABLE when no
    LLM answers (the conversation brief asks this way; extracted sentences are no summary).
    """

    question: str
    context: list[ContextNode] = msgspec.field(default_factory=list)
    session_id: str | None = None
    history: list[ChatTurn] = msgspec.field(default_factory=list)
    brief: str | None = None
    mode: Literal["compact", "tree_summarize"] = "compact"
    max_tokens: int | None = None
    prompt_tokens: int = 0
    trim_info: TrimInfo = msgspec.field(default_factory=TrimInfo)
    timings_ms: dict[str, float] = msgspec.field(default_factory=dict)
    provider: str | None = None  # pin a provider (tests, A/B); None lets the router choose
    # the answer cache's partition (filters + corpus versions) and the question's vector;
    # None disables the cache for this request
    cache_scope: str | None = None
    question_vector: bytes | None = None
    llm_only: bool = False


class TurnDone(Message, frozen=True, kw_only=True):
    """Published by the router on ``<prefix>.memory.append`` when an answer is done, so
    the context-trimmer can keep the session's conversation memory."""

    session_id: str
    request_id: str
    question: str
    answer: str
    at: int
