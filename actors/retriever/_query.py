"""The query hop: self-query, embed, scatter to shards, gather by the deadline, fuse.

It lives apart from the actor class so its steps read in order; the actor wires
it to ``<prefix>.query``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import anyio
import numpy as np

from runtime import BadRequest, Client, Context, RagbusError
from runtime.bm25 import BM25Encoder
from subjects import (
    Embed,
    Embedded,
    Query,
    QueryFilters,
    Search,
    SearchHit,
    SearchResult,
    Source,
    SparseVector,
    Subjects,
    deadline_after,
)

from ._filters import to_store_filter
from ._fusion import by_score, rrf
from ._selfquery import merge_filters, self_query

__all__ = ("Gathered", "Prepared", "dense_array", "gather", "prepare", "to_sources")

_QUERY_BM25 = BM25Encoder()


@dataclass(frozen=True, slots=True)
class Prepared:
    text: str
    filters: QueryFilters | None


def prepare(query: Query, max_top_k: int) -> Prepared:
    if not 1 <= query.top_k <= max_top_k:
        raise BadRequest(f"top_k={query.top_k} is out of range: use 1..{max_top_k}")
    text, lifted = self_query(query.question)
    if not text.strip():
        raise BadRequest("the question is empty once filter terms (tag:, doc:, after:, "
                         "before:, version:) are removed: ask something")
    filters = merge_filters(query.filters, lifted)
    to_store_filter(filters)  # refuse bad filters here, before any shard is asked
    return Prepared(text=text, filters=filters)


@dataclass(frozen=True, slots=True)
class Gathered:
    hits: list[SearchHit]
    missing: list[str]
    timings_ms: dict[str, float]
    vector: bytes | None  # the question's embedding, when one was made


async def gather(ctx: Context, client: Client, subjects: Subjects, query: Query,
                 prepared: Prepared, shards: Sequence[str], *, candidates: int,
                 search_timeout_s: float, rrf_k: int) -> Gathered:
    timings: dict[str, float] = {}
    dense: bytes | None = None
    if query.retrieval != "keyword":
        t = time.perf_counter()
        reply = await ctx.request(subjects.embed, Embed(texts=[prepared.text],
                                                        deadline=ctx.deadline), Embedded)
        dense = reply.vectors
        timings["embed"] = (time.perf_counter() - t) * 1000
    sparse = None
    if query.retrieval != "dense":
        weights = _QUERY_BM25.query(prepared.text)
        sparse = SparseVector(indices=weights.indices, values=weights.values)
    limit = max(candidates, query.top_k)

    # a shard gets a bounded share of the time left; what misses it is reported missing
    budget = min(search_timeout_s, ctx.remaining() * 0.5)
    results: dict[str, SearchResult] = {}
    t = time.perf_counter()

    async def ask(shard: str) -> None:
        search = Search(request_id=query.request_id, shard=shard, dense=dense, sparse=sparse,
                        filters=prepared.filters, limit=limit, deadline=deadline_after(budget),
                        trace=ctx.trace, widen=query.widen)
        try:
            results[shard] = await client.request(subjects.search(shard), search, SearchResult,
                                                  timeout=budget)
        except RagbusError as exc:
            if exc.code.value == "BAD_REQUEST":
                raise
            ctx.log.warning("search.shard_missing", shard=shard, code=exc.code.value)

    with anyio.move_on_after(budget + 0.05):
        async with anyio.create_task_group() as tg:
            for shard in shards:
                tg.start_soon(ask, shard)
    timings["search"] = (time.perf_counter() - t) * 1000
    missing = [s for s in shards if s not in results]
    dense_lists = [r.dense for r in results.values()]
    sparse_lists = [r.sparse for r in results.values()]
    if query.retrieval == "dense":
        hits = by_score(dense_lists)
    elif query.retrieval == "keyword":
        hits = by_score(sparse_lists)
    else:
        hits = rrf([by_score(dense_lists), by_score(sparse_lists)], k=rrf_k)
    return Gathered(hits=hits, missing=missing, timings_ms=timings, vector=dense)


def to_sources(hits: Sequence[SearchHit], top_k: int, *, widen: bool) -> list[Source]:
    """The best ``top_k`` hits as sources; widened to their parent sections on request
    (one source per parent: siblings collapse into it)."""
    sources: list[Source] = []
    seen_parents: set[str] = set()
    for hit in hits:
        p = hit.payload
        parent = str(p.get("parent_id", ""))
        if widen:
            if parent in seen_parents:
                continue
            seen_parents.add(parent)
        text = str(p.get("parent_text") if widen and p.get("parent_text") else p.get("text", ""))
        sources.append(Source(
            doc_id=str(p.get("doc_id", "")), chunk_id=hit.chunk_id, score=hit.score,
            title=str(p["title"]) if p.get("title") else None, text=text,
            shard=str(p.get("_shard")) if p.get("_shard") else None,
            metadata={k: p[k] for k in ("version", "tags", "chunk_index", "parent_id",
                                         "source", "created_at") if k in p},
        ))
        if len(sources) == top_k:
            break
    return sources


def dense_array(vector: bytes) -> list[float]:
    values: list[float] = np.frombuffer(vector, dtype="<f4").tolist()
    return values
