"""The retriever actor, index side: the only writer of the vector store."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import msgspec
import numpy as np
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client import Counter

from ragbus.runtime import (
    Actor,
    BadRequest,
    Client,
    Context,
    Unavailable,
    WorkerThread,
    endpoint,
    ensure_kv,
    kv_entries,
)
from ragbus.runtime.actor import EndpointSpec
from ragbus.subjects import (
    CorpusVersion,
    IndexApplied,
    IndexUpdate,
    Query,
    Search,
    SearchHit,
    SearchResult,
    Sources,
    Trim,
    corpus_bucket,
    retrieval_cache_bucket,
)
from ragbus.subjects._audit import AuditKind

from ._cache import CachedSources, RetrievalCache, answer_scope, retrieval_key
from ._filters import to_store_filter
from ._query import Ranking, dense_array, gather, prepare, to_sources
from .store import (
    DimensionMismatch,
    EdgeStore,
    Hit,
    InvalidPoint,
    Record,
    ServerStore,
    StoreError,
    VectorStore,
)
from .store import SparseVector as StoreSparse

__all__ = ("Retriever",)


class Retriever(Actor):
    """Owns one vector store per shard it serves; applies index updates, serves searches."""

    name = "retriever"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config = self.settings.retriever
        self.worker = WorkerThread("retriever")
        self.stores: dict[str, VectorStore] = {}
        self._last_write: dict[str, float] = {}
        self._optimized: dict[str, bool] = {}
        self.optimizations = 0
        self._optimizing = 0
        self.corpus_versions: dict[str, int] = {}
        self.cache: RetrievalCache | None = None
        self._corpus_sub: Subscription | None = None
        self._cache_lookups = self.metrics.get(Counter, "ragbus_retrieval_cache",
                                               "Retrieval cache lookups by result",
                                               ["actor", "result"])

    def routes(self, spec: EndpointSpec) -> list[tuple[str, str]]:
        if spec.name in ("index_apply", "search"):
            # one subscription per shard; replicas of a shard share its queue group
            subject = self.subjects.index_apply if spec.name == "index_apply" \
                else self.subjects.search
            return [(subject(shard), f"{self.name}-{shard}") for shard in self.config.shards]
        return super().routes(spec)

    def _open(self, shard: str) -> VectorStore:
        if self.config.backend == "server":
            from qdrant_client import QdrantClient

            key = self.config.api_key.get() if self.config.api_key else None
            client = QdrantClient(url=self.config.url, api_key=key) if self.config.url \
                else QdrantClient(":memory:")
            collection = f"{self.subjects.prefix.replace('.', '_')}_{shard}"
            return ServerStore(client, collection, owns_client=True)
        root = Path(self.config.data_dir) if self.config.data_dir else \
            self.settings.data_root / "qdrant"
        return EdgeStore(root / shard)

    async def setup(self) -> None:
        for shard in self.config.shards:
            try:
                self.stores[shard] = await self.worker.run(self._open, shard)
            except StoreError as exc:
                raise Unavailable(f"shard {shard!r} cannot be opened: {exc}") from exc
        corpus = await ensure_kv(self.nc, corpus_bucket(self.subjects))
        for entry in await kv_entries(corpus):
            self.corpus_versions[entry.key] = int(entry.value or b"0")
        self._corpus_sub = await self.nc.subscribe(self.subjects.corpus_version,
                                                   cb=self._on_corpus_version)
        if self.config.cache:
            self.cache = RetrievalCache(await ensure_kv(
                self.nc, retrieval_cache_bucket(self.subjects, self.config.cache_ttl_s)))

    async def _on_corpus_version(self, msg: Msg) -> None:
        try:
            change = msgspec.json.decode(msg.data, type=CorpusVersion)
        except msgspec.DecodeError:
            return
        if change.version > self.corpus_versions.get(change.collection, 0):
            self.corpus_versions[change.collection] = change.version

    async def teardown(self) -> None:
        if self._corpus_sub is not None and not self.nc.is_closed:
            await self._corpus_sub.unsubscribe()
        for store in self.stores.values():
            await self.worker.run(store.close)
        self.worker.close()

    async def background(self) -> None:
        """Build HNSW once writes to a shard have been quiet for ``optimize_idle_s``."""
        idle = self.config.optimize_idle_s
        while True:
            await anyio.sleep(max(0.05, idle / 4))
            now = time.monotonic()
            for shard, last in list(self._last_write.items()):
                if not self._optimized.get(shard, True) and now - last >= idle:
                    self._optimized[shard] = True
                    self._optimizing += 1
                    try:
                        rebuilt = await self.worker.run(self.stores[shard].optimize)
                    finally:
                        self._optimizing -= 1
                    self.optimizations += int(rebuilt)
                    self.log.info("retriever.optimized", shard=shard, rebuilt=rebuilt)

    @property
    def optimized(self) -> bool:
        """Every write so far has been followed by a finished index build (benchmarks wait
        for it: searches of a shard still being written fall back to brute force)."""
        return self._optimizing == 0 and all(self._optimized.values())

    def _store(self, shard: str) -> VectorStore:
        try:
            return self.stores[shard]
        except KeyError:
            raise BadRequest(f"this retriever does not serve shard {shard!r}; it serves "
                             f"{', '.join(self.stores)}") from None

    @endpoint(lambda s: s.index_apply("default"), request=IndexUpdate)
    async def index_apply(self, request: IndexUpdate, ctx: Context) -> IndexApplied:
        store = self._store(request.collection)
        records = []
        for point in request.upserts:
            vector = np.frombuffer(point.vector, dtype="<f4")
            if vector.shape[0] != request.dim:
                raise BadRequest(f"point {point.id} has {vector.shape[0]} dimensions; "
                                 f"the update declares dim={request.dim}")
            sparse = (StoreSparse(indices=point.sparse.indices, values=point.sparse.values)
                      if point.sparse else None)
            records.append(Record(id=point.id, dense=vector.tolist(), sparse=sparse,
                                  payload=point.payload))

        def apply() -> int:
            if records:
                if store.dim != request.dim:  # creates, or raises DimensionMismatch
                    store.ensure_collection(request.dim)
                store.upsert(records)
            if store.dim is None:
                return 0  # nothing was ever written: nothing to delete or patch
            if request.deletes:
                store.delete(request.deletes)
            for patch in request.patches:
                store.set_payload(patch.ids, patch.payload)
            return store.count()

        try:
            points = await self.worker.run(apply)
        except DimensionMismatch as exc:
            raise BadRequest(str(exc), details={"model_id": request.model_id}) from None
        except InvalidPoint as exc:
            raise BadRequest(str(exc)) from None
        if records or request.deletes or request.patches:
            self._last_write[request.collection] = time.monotonic()
            self._optimized[request.collection] = False
        return IndexApplied(request_id=request.request_id, upserted=len(records),
                            deleted=len(request.deletes),
                            patched=sum(len(p.ids) for p in request.patches), points=points)

    @endpoint(lambda s: s.search("default"), request=Search)
    async def search(self, request: Search, ctx: Context) -> SearchResult:
        """One shard's dense and keyword rankings for a query (the scatter target)."""
        store = self._store(request.shard)
        flt = to_store_filter(request.filters)
        limit = max(1, min(request.limit, 1000))
        dense = dense_array(request.dense) if request.dense else None
        sparse = (StoreSparse(indices=request.sparse.indices, values=request.sparse.values)
                  if request.sparse and request.sparse.indices else None)

        def run() -> tuple[list[Hit], list[Hit]]:
            if store.dim is None:
                return [], []  # nothing ingested into this shard yet
            if dense is not None and len(dense) != store.dim:
                raise BadRequest(f"query vector has {len(dense)} dimensions; shard "
                                 f"{request.shard!r} holds {store.dim}")
            d = store.search(dense, limit=limit, filter=flt) if dense is not None else []
            s = store.search(sparse, limit=limit, filter=flt) if sparse is not None else []
            return d, s

        d, s = await self.worker.run(run)

        def hits(found: list[Hit]) -> list[SearchHit]:
            out = []
            for h in found:
                payload = dict(h.payload)
                if not request.widen:
                    payload.pop("parent_text", None)
                payload["_shard"] = request.shard
                out.append(SearchHit(chunk_id=h.id, score=h.score, payload=payload))
            return out

        return SearchResult(request_id=request.request_id, shard=request.shard, dense=hits(d),
                            sparse=hits(s))

    @endpoint(lambda s: s.query, request=Query)
    async def query(self, request: Query, ctx: Context) -> None:
        """A question in; ``Sources`` to the client, ``Trim`` on to the context-trimmer."""
        cfg = self.config
        started = time.perf_counter()
        await ctx.audit(AuditKind.QUERY_RECEIVED, session=request.session_id,
                        question=request.question,
                        sizes={"top_k": request.top_k, "shards": len(request.collections)},
                        details={"retrieval": request.retrieval, "generate": request.generate})
        prepared = prepare(request, cfg.max_top_k)
        shards = request.collections or cfg.query_shards or cfg.shards
        versions = {s: self.corpus_versions.get(s, 0) for s in shards}
        ranking = Ranking(fusion=cfg.fusion, dense_weight=cfg.dense_weight, rrf_k=cfg.rrf_k,
                          per_doc=cfg.per_doc, candidates=cfg.candidates)
        key = retrieval_key(question=prepared.text, filters=prepared.filters,
                            top_k=request.top_k, mode=request.retrieval, widen=request.widen,
                            shards=versions, ranking=repr(ranking))
        cached = await self.cache.get(key) if self.cache is not None else None
        timings: dict[str, float] = {}
        if cached is not None:
            self._cache_lookups.labels(self.name, "hit").inc()
            sources, missing, vector = cached.sources, cached.missing_shards, cached.vector
            timings["retrieval_cache_hit"] = 1.0
        else:
            if self.cache is not None:
                self._cache_lookups.labels(self.name, "miss").inc()
            gathered = await gather(ctx, Client(self.nc, self.subjects), self.subjects,
                                    request, prepared, shards,
                                    search_timeout_s=cfg.search_timeout_s, ranking=ranking,
                                    local={s: partial(self.search, ctx=ctx) for s in shards
                                           if s in self.stores})
            sources = to_sources(gathered.hits, request.top_k, widen=request.widen)
            missing, vector = gathered.missing, gathered.vector
            timings.update(gathered.timings_ms)
            if self.cache is not None:
                await self.cache.put(key, CachedSources(sources=sources, missing_shards=missing,
                                                        vector=vector))
        timings["retrieval"] = (time.perf_counter() - started) * 1000
        await ctx.publish(request.reply_to, Sources(request_id=request.request_id,
                                                    sources=sources, missing_shards=missing))
        await ctx.publish(self.subjects.trim, Trim(
            request_id=request.request_id, deadline=ctx.deadline, trace=ctx.trace,
            reply_to=request.reply_to, question=prepared.text, sources=sources,
            session_id=request.session_id, generate=request.generate,
            provider=request.provider, timings_ms=timings,
            # a partial answer (a shard missing) is not worth caching
            cache_scope=None if missing else answer_scope(filters=prepared.filters,
                                                          shards=versions),
            question_vector=vector))
