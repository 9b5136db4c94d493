"""Events streamed to a query's ``reply_to``: one tagged union, so a client decodes one type."""

from __future__ import annotations

from typing import Any

import msgspec

from ._base import Message
from ._errors import ErrorCode
from ._generate import ContextNode, TrimInfo

__all__ = ("Cancelled", "ContextReady", "Done", "Failed", "QueryEvent", "Source", "Sources",
           "Token", "TreeReport")


class _Event(Message, frozen=True, kw_only=True, tag_field="type"):
    request_id: str


class Source(msgspec.Struct, frozen=True, kw_only=True):
    """One retrieved chunk as the client sees it."""

    doc_id: str
    chunk_id: str
    score: float
    title: str | None = None
    text: str = ""
    shard: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class Sources(_Event, frozen=True, kw_only=True, tag="sources"):
    """Sent as soon as retrieval is done, before any token."""

    sources: list[Source]
    missing_shards: list[str] = msgspec.field(default_factory=list)


class ContextReady(_Event, frozen=True, kw_only=True, tag="context"):
    """The trimmed, budgeted context the answer will be generated from."""

    nodes: list[ContextNode]
    trim_info: TrimInfo


class Token(_Event, frozen=True, kw_only=True, tag="token"):
    """A run of generated text; ``seq`` starts at 0 and has no gaps."""

    seq: int
    text: str


class TreeReport(msgspec.Struct, frozen=True, kw_only=True):
    """How a ``tree_summarize`` answer was made (``Done.tree``).

    The context's nodes went in ``groups``; each group was summarized by a map call
    that walked the provider chain (``map_calls`` counts its provider attempts,
    fallbacks included; ``summarized_by`` how many groups each provider summarized).
    ``cut`` groups ran out of the map step's time and went to the answer as their
    best sentences, quoted from the nodes; ``empty`` groups had nothing to give.
    """

    groups: int
    map_calls: int = 0
    summarized_by: dict[str, int] = msgspec.field(default_factory=dict)
    cut: int = 0
    empty: int = 0


class Done(_Event, frozen=True, kw_only=True, tag="done"):
    """The stream ended normally. ``tree`` is set when the answer was tree-summarized.

    ``stopped`` says why the router ended the answer before the provider did:
    ``"repetition"`` when the stream looped (the same run of words over and over) and
    was cut there; None when the provider finished it.
    """

    text_length: int = 0
    provider: str | None = None
    model: str | None = None
    usage: dict[str, int] = msgspec.field(default_factory=dict)
    timings_ms: dict[str, float] = msgspec.field(default_factory=dict)
    cache_hit: bool = False
    prompt_version: str | None = None
    tree: TreeReport | None = None
    stopped: str | None = None


class Failed(_Event, frozen=True, kw_only=True, tag="failed"):
    """The stream ended with an error; ``trace_id`` lets an operator find the logs."""

    code: ErrorCode
    message: str
    trace_id: str | None = None
    partial_text_length: int = 0
    details: dict[str, Any] = msgspec.field(default_factory=dict)


class Cancelled(_Event, frozen=True, kw_only=True, tag="cancelled"):
    """The requester cancelled; what had been produced so far."""

    partial_text_length: int = 0
    tokens_used: int = 0


QueryEvent = Sources | ContextReady | Token | Done | Failed | Cancelled
