"""The query hop: self-query, embed, scatter to shards, gather by the deadline, fuse.

It lives apart from the actor class so its steps read in order; the actor wires
it to ``<prefix>.query``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import anyio

from ragbus.runtime import BadRequestError, Client, Context, RagbusError, tracing
from ragbus.runtime.text import BM25Encoder
from ragbus.subjects import (
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
from ._fusion import Fusion, by_score, collapse, fuse
from ._selfquery import merge_filters, self_query

__all__ = ("EarlyEmbedding", "Gathered", "LocalFetch", "LocalSearch", "Prepared", "Ranking",
           "embed_question", "gather", "prepare", "settle", "to_sources")

_QUERY_BM25 = BM25Encoder()


@dataclass(frozen=True, slots=True)
class Prepared:
    text: str
    filters: QueryFilters | None


def prepare(query: Query, max_top_k: int) -> Prepared:
    if not 1 <= query.top_k <= max_top_k:
        raise BadRequestError(f"top_k={query.top_k} is out of range: use 1..{max_top_k}")
    text, lifted = self_query(query.question)
    if not text.strip():
        raise BadRequestError("the question is empty once filter terms (tag:, doc:, after:, "
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


async def embed_question(ctx: Context, subjects: Subjects, text: str) -> Embedded:
    """The question's vector, from the embedder's query lane."""
    return await ctx.request(subjects.embed, Embed(texts=[text], lane="query",
                                                   deadline=ctx.deadline), Embedded)


class EarlyEmbedding:
    """The question's vector, asked for before the query knows it needs it.

    Before the scatter a query reads its shards' corpus versions and looks up the
    retrieval cache (a round trip to the KV store each, ~0.5-1 ms); the vector needs
    neither, so asking for it beside them takes that wait off every query's path. On a
    cache hit the answer is dropped: the question was embedded before, so the embedder
    answers it from its own cache, not the model. Run :meth:`ask` in a task; an error is
    kept for :meth:`reply`, where the query would have met it anyway.
    """

    __slots__ = ("_done", "_error", "_reply")

    def __init__(self) -> None:
        self._done = anyio.Event()
        self._reply: Embedded | None = None
        self._error: Exception | None = None

    async def ask(self, ctx: Context, subjects: Subjects, text: str) -> None:
        try:
            self._reply = await embed_question(ctx, subjects, text)
        except Exception as exc:
            self._error = exc
        finally:
            self._done.set()

    async def reply(self) -> Embedded:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._reply is not None
        return self._reply


@dataclass(frozen=True, slots=True)
class Ranking:
    """How the gathered hits become one ranking (``retriever.*`` settings of that name)."""

    fusion: Fusion = "dbsf"
    dense_weight: float = 0.7
    rrf_k: int = 60
    per_doc: int = 1
    #: hits fetched per ranking and shard before fusion (at least the query's top_k)
    candidates: int = 100


#: a shard this retriever serves itself: searched in-process, not over the bus
LocalSearch = Callable[[Search], Awaitable[SearchResult]]
#: the payloads of ``ids`` in a shard this retriever serves, by id, as its searches give
#: them (``widen``: with the parent text); an id no longer there is left out
LocalFetch = Callable[[str, Sequence[str], bool], Awaitable[Mapping[str, dict[str, object]]]]

#: hits whose payloads are read at a time, at least (see :func:`settle`)
_WINDOW = 16


def _is_light(hit: SearchHit, light: Collection[str]) -> bool:
    return len(hit.payload) == 1 and hit.payload.get("_shard") in light


async def settle(hits: Sequence[SearchHit], *, per_doc: int, want: int, widen: bool,
                 fetch: LocalFetch, light: Collection[str]) -> list[SearchHit]:
    """The fused ranking's head, payloads read, at most ``per_doc`` hits per document:
    as many hits as ``want`` sources take (``to_sources``), or all there are.

    A hit of a shard in ``light`` (searched without payloads: see ``Search.payload``)
    names only its shard; its payload is read here, a window of hits at a time, so a query reads the
    few payloads it keeps rather than every candidate's. A hit whose point is gone by
    then is dropped, as a search a moment later would not have found it.
    """
    seen: dict[str, int] = {}
    parents: set[str] = set()
    out: list[SearchHit] = []
    window = max(2 * want, _WINDOW)
    for start in range(0, len(hits), window):
        batch = hits[start:start + window]
        wanted: dict[str, list[str]] = {}
        for hit in batch:
            if _is_light(hit, light):
                wanted.setdefault(str(hit.payload["_shard"]), []).append(hit.chunk_id)
        found: dict[str, dict[str, object]] = {}
        for shard, ids in wanted.items():
            found.update(await fetch(shard, ids, widen))
        for hit in batch:
            if _is_light(hit, light):
                payload = found.get(hit.chunk_id)
                if payload is None:
                    continue
                hit = SearchHit(chunk_id=hit.chunk_id, score=hit.score, payload=payload)
            doc = str(hit.payload.get("doc_id", hit.chunk_id))
            if per_doc > 0:
                if seen.get(doc, 0) >= per_doc:
                    continue
                seen[doc] = seen.get(doc, 0) + 1
            out.append(hit)
            parents.add(str(hit.payload.get("parent_id", "")) if widen else hit.chunk_id)
            if len(parents) >= want:
                return out
    return out


async def gather(ctx: Context, client: Client, subjects: Subjects, query: Query,
                 prepared: Prepared, shards: Sequence[str], *,
                 search_timeout_s: float, ranking: Ranking,
                 local: Mapping[str, LocalSearch] | None = None,
                 fetch: LocalFetch | None = None,
                 min_versions: Mapping[str, int] | None = None,
                 embedding: EarlyEmbedding | None = None) -> Gathered:
    """Scatter the query to its shards and fuse what comes back by the deadline.

    The keyword half needs no embedding, so it goes out at once and runs while
    the embedder works; the dense half follows the vector. Shards served by this
    retriever are searched in-process (the same handler, without two bus hops and
    the hits' JSON); the others get a ``Search`` each. A shard whose reply misses
    its share of the time is reported missing, and the answer goes on without it.
    ``min_versions``: per shard, the index stream sequence its replica must have applied
    before it answers (read-your-writes; it waits within its share of the time).
    With ``fetch``, local shards are searched without payloads and only the payloads
    the ranking's head needs are read (:func:`settle`): the hits come back cut to
    what ``query.top_k`` sources take. ``embedding``: the question's vector, asked for
    before (else it is asked for here).
    """
    local = local or {}
    min_versions = min_versions or {}
    limit = max(ranking.candidates, query.top_k)
    timings: dict[str, float] = {}
    dense_lists: dict[str, list[SearchHit]] = {}
    sparse_lists: dict[str, list[SearchHit]] = {}
    missing: set[str] = set()

    model: str | None = None  # of the question's vector

    async def ask(shard: str, dense: bytes | None, sparse: SparseVector | None) -> None:
        # a shard gets a bounded share of the time left; what misses it is reported missing
        budget = min(search_timeout_s, ctx.remaining() * 0.5)
        search = Search(request_id=query.request_id, shard=shard, dense=dense, sparse=sparse,
                        filters=prepared.filters, limit=limit, deadline=deadline_after(budget),
                        trace=ctx.trace, widen=query.widen,
                        model=model if dense is not None else None,
                        min_version=min_versions.get(shard) or None,
                        payload=fetch is None or shard not in local)
        result: SearchResult | None = None
        try:
            in_process = local.get(shard)
            if in_process is None:
                result = await client.request(subjects.search(shard), search, SearchResult,
                                              timeout=budget)
            else:
                with anyio.move_on_after(budget), tracing.span(
                        f"retriever search {shard}", ctx.trace, shard=shard,
                        dense=dense is not None, in_process=True) as searched:
                    result = await in_process(search)
                    searched.set(hits=len(result.dense) + len(result.sparse))
        except RagbusError as exc:
            if exc.code.value == "BAD_REQUEST":
                raise
            ctx.log.warning("search.shard_missing", shard=shard, code=exc.code.value)
        except Exception as exc:  # a local store failing is a missing shard, as a remote one
            ctx.log.error("search.shard_failed", shard=shard, error=repr(exc))
        if result is None:
            missing.add(shard)
            return
        if dense is not None:
            dense_lists[shard] = result.dense
        if sparse is not None:
            sparse_lists[shard] = result.sparse

    vector: bytes | None = None
    t = time.perf_counter()

    async def dense_half() -> None:
        nonlocal vector, model
        e = time.perf_counter()
        reply = await (embedding.reply() if embedding is not None
                       else embed_question(ctx, subjects, prepared.text))
        vector, model = reply.vectors, reply.model_id
        timings["embed"] = (time.perf_counter() - e) * 1000
        if reply.cache_hits:  # the question's vector came from the embedding cache
            timings["embed_cache_hit"] = 1.0
        for shard in shards:
            tg.start_soon(ask, shard, vector, None)

    async with anyio.create_task_group() as tg:
        if query.retrieval != "keyword":
            tg.start_soon(dense_half)
            await anyio.lowlevel.checkpoint()  # the embed request is on its way first
        sparse = _QUERY_BM25.query(prepared.text) if query.retrieval != "dense" else None
        if sparse is not None and sparse.indices:  # no known word: no keyword half
            for shard in shards:
                tg.start_soon(ask, shard, None, sparse)
    answered = [s for s in shards if s not in missing]
    dense_hits = by_score([dense_lists[s] for s in answered if s in dense_lists])
    sparse_hits = by_score([sparse_lists[s] for s in answered if s in sparse_lists])
    if query.retrieval == "dense":
        hits = dense_hits
    elif query.retrieval == "keyword":
        hits = sparse_hits
    else:
        hits = fuse(dense_hits, sparse_hits, ranking.fusion, rrf_k=ranking.rrf_k,
                    dense_weight=ranking.dense_weight)
    if fetch is None:
        hits = collapse(hits, ranking.per_doc)
    else:
        hits = await settle(hits, per_doc=ranking.per_doc, want=query.top_k,
                            widen=query.widen, fetch=fetch, light=set(local))
    timings["search"] = (time.perf_counter() - t) * 1000  # both halves, embedding, fusion and
    # the payloads read included
    return Gathered(hits=hits, missing=[s for s in shards if s in missing], timings_ms=timings,
                    vector=vector)


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

