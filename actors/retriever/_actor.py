"""The retriever actor, index side: the only writer of the vector store."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from runtime import Actor, BadRequest, Context, Unavailable, WorkerThread, endpoint
from runtime.actor import EndpointSpec
from runtime.state import data_root
from subjects import IndexApplied, IndexUpdate

from .store import (
    DimensionMismatch,
    EdgeStore,
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

    def routes(self, spec: EndpointSpec) -> list[tuple[str, str]]:
        if spec.name == "index_apply":
            # one subscription per shard; replicas of a shard share its queue group
            return [(self.subjects.index_apply(shard), f"{self.name}-{shard}")
                    for shard in self.config.shards]
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
            data_root(self.settings) / "qdrant"
        return EdgeStore(root / shard)

    async def setup(self) -> None:
        for shard in self.config.shards:
            try:
                self.stores[shard] = await self.worker.run(self._open, shard)
            except StoreError as exc:
                raise Unavailable(f"shard {shard!r} cannot be opened: {exc}") from exc

    async def teardown(self) -> None:
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
                    rebuilt = await self.worker.run(self.stores[shard].optimize)
                    self.optimizations += int(rebuilt)
                    self.log.info("retriever.optimized", shard=shard, rebuilt=rebuilt)

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
