"""The query path: a question in, sources and a budgeted context out, then an answer."""

from __future__ import annotations

from typing import Literal

import msgspec

from ._base import Message, Name, Request, StreamRequest
from ._events import Source
from ._index import SparseVector

__all__ = ("Query", "QueryFilters", "RetrievalMode", "Search", "SearchHit", "SearchResult",
           "Trim")

RetrievalMode = Literal["hybrid", "dense", "keyword"]


class QueryFilters(msgspec.Struct, frozen=True, kw_only=True):
    """Which chunks may answer. Dates are ISO 8601 (``2024-01-01`` or with a time and
    offset); ``after`` is inclusive, ``before`` exclusive. Soft-deleted documents
    never match."""

    tags: list[str] | None = None
    doc_ids: list[str] | None = None
    version: int | None = None
    min_version: int | None = None
    max_version: int | None = None
    after: str | None = None
    before: str | None = None


class Query(StreamRequest, frozen=True, kw_only=True):
    """What a client publishes on ``<prefix>.query``; events arrive on ``reply_to``.

    Self-query terms in the question (``tag:x``, ``doc:y``, ``after:2024-01-01``,
    ``before:…``) become filters and are removed from the text that is searched.
    ``collections`` names the shards to search (empty: the retriever's defaults).
    ``generate=False`` stops after the context (a retrieval-only query).
    """

    question: str
    session_id: str | None = None
    filters: QueryFilters | None = None
    collections: list[Name] = msgspec.field(default_factory=list)
    top_k: int = 5
    retrieval: RetrievalMode = "hybrid"
    widen: bool = False
    generate: bool = True
    provider: str | None = None
    #: read-your-writes: each searched shard answers only once it has applied every update
    #: stored up to this index stream sequence (an ingest job's ``corpus_version``); a
    #: replica behind waits for its apply, within the deadline. None: the shards' corpus
    #: versions (their last finished job) are the minimum anyway
    min_corpus_version: int | None = None


class Search(Request, frozen=True, kw_only=True):
    """One shard's part of a fan-out: dense and/or sparse query, one filter."""

    shard: Name
    dense: bytes | None = None  # float32 little-endian
    sparse: SparseVector | None = None
    filters: QueryFilters | None = None
    limit: int = 10
    widen: bool = False  # include each hit's parent text (larger replies)
    #: the embedding model of ``dense``: a shard holding another model's vectors refuses
    model: str | None = None
    #: the index stream sequence the answering replica must have applied (see
    #: ``Query.min_corpus_version``); it waits for its apply, within the deadline
    min_version: int | None = None
    #: False: each hit's payload holds only ``_shard``, and the asker reads the payloads
    #: of the few hits it keeps (reading hundreds of candidates' payloads is most of a
    #: search's cost); the retriever asks this of the shards it serves itself
    payload: bool = True


class SearchHit(msgspec.Struct, frozen=True, kw_only=True):
    chunk_id: str
    score: float
    payload: dict[str, object]


class SearchResult(Message, frozen=True, kw_only=True):
    request_id: str
    shard: str
    dense: list[SearchHit] = msgspec.field(default_factory=list)
    sparse: list[SearchHit] = msgspec.field(default_factory=list)
    #: the index stream sequence the answering replica had applied when it searched
    applied: int | None = None


class Trim(StreamRequest, frozen=True, kw_only=True):
    """Retriever -> context-trimmer: the hits, best first, to fit into the budget."""

    question: str
    sources: list[Source]
    session_id: str | None = None
    generate: bool = True
    provider: str | None = None
    timings_ms: dict[str, float] = msgspec.field(default_factory=dict)
    # for the router's answer cache: what the answer depends on besides the question
    # (filters and the searched shards' corpus versions), and the question's vector
    cache_scope: str | None = None
    question_vector: bytes | None = None
