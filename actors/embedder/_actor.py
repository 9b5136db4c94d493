"""The embedder actor: ``Embed`` in, ``Embedded`` out, cached and micro-batched.

Two lanes: bulk (ingest chunks, compression sentences; batches of up to
``batch_size`` on all cores) and query (a question's vector: a second model
instance on a thread of its own with ``query_threads`` threads). A batch cannot be
interrupted once it runs, so a priority inside one queue would still leave a
question waiting up to a whole bulk batch (1.5-2 s); a lane of its own leaves it
waiting for nothing but CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Unpack

import anyio
import numpy as np
from nats.js.api import KeyValueConfig, StorageType
from numpy.typing import NDArray
from prometheus_client import Counter, Histogram

from ragbus.config import Settings
from ragbus.runtime import (
    Actor,
    ActorOptions,
    BadRequestError,
    Context,
    TooLargeError,
    UnavailableError,
    WorkerThread,
    endpoint,
)
from ragbus.subjects import Embed, Embedded

from ._batcher import MicroBatcher
from ._cache import EmbeddingCache
from ._errors import ModelLoadError
from ._model import EmbeddingModel

__all__ = ("Embedder",)


class Embedder(Actor):
    """Turns texts into vectors with the configured (offline by default) model."""

    name = "embedder"

    def __init__(self, settings: Settings | None = None,
                 **options: Unpack[ActorOptions]) -> None:
        settings = settings or Settings()
        if options.get("concurrency") is None:
            options["concurrency"] = settings.embedder.concurrency
        super().__init__(settings, **options)
        self.config = self.settings.embedder
        self.worker = WorkerThread("embedder", nice=self.config.bulk_nice)
        self.query_worker = WorkerThread("embedder-query")
        self.model: EmbeddingModel | None = None
        self.batcher: MicroBatcher | None = None
        #: the query lane (None when ``embedder.query_lane`` is off)
        self.query_model: EmbeddingModel | None = None
        self.query_batcher: MicroBatcher | None = None
        self.cache: EmbeddingCache | None = None
        self._lookups = self.metrics.get(
            Counter,
            "ragbus_embedding_cache",
            "Embedding cache lookups by result",
            ["actor", "result"],
        )
        self._batch_sizes = self.metrics.get(
            Histogram,
            "ragbus_embedding_batch_texts",
            "Texts per model call",
            ["actor"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        )

    async def setup(self) -> None:
        cfg = self.config
        loaded: dict[str, EmbeddingModel | Exception] = {}

        async def load(lane: str, worker: WorkerThread, batch_size: int,
                       threads: int | None) -> None:
            try:
                loaded[lane] = await worker.run(
                    EmbeddingModel.load, cfg.model, batch_size=batch_size, threads=threads,
                    spin_wait=cfg.spin_wait)
            except Exception as exc:  # raised below as it is, not inside a group
                loaded[lane] = exc

        # both lanes load at once, each on its own thread: a restarted embedder serves
        # again that much sooner (a load is mostly single-threaded session setup)
        async with anyio.create_task_group() as tg:
            tg.start_soon(load, "bulk", self.worker, cfg.batch_size, cfg.threads)
            if cfg.query_lane:
                tg.start_soon(load, "query", self.query_worker, cfg.query_lane_max_texts,
                              cfg.query_threads)
        for result in loaded.values():
            if isinstance(result, ModelLoadError):
                raise UnavailableError(
                    f"embedding model {cfg.model!r} cannot be loaded: {result}") from result
            if isinstance(result, Exception):
                raise result
        bulk, query = loaded["bulk"], loaded.get("query")
        assert isinstance(bulk, EmbeddingModel)
        self.model = bulk
        self.query_model = query if isinstance(query, EmbeddingModel) else None
        model = self.model
        kv = None
        if cfg.cache:
            kv = await self.ensure_kv(
                KeyValueConfig(
                    bucket=self.subjects.bucket("embeddings"),
                    history=1,
                    max_bytes=cfg.cache_max_bytes,
                    storage=StorageType.FILE,
                    description="embedding cache: <model>.<sha256(text)> -> float32 vector",
                ),
            )
        # cache off means off: no shared bucket and no in-process copy either
        self.cache = EmbeddingCache(kv, model.model_id, local_entries=4096 if cfg.cache else 0)

        sizes = self._batch_sizes.labels(self.name)

        def runs(lane: EmbeddingModel) -> Callable[[Sequence[str]], NDArray[np.float32]]:
            def embed_batch(texts: Sequence[str]) -> NDArray[np.float32]:
                sizes.observe(len(texts))
                return lane.embed(texts)
            return embed_batch

        self.batcher = MicroBatcher(
            runs(model),
            self.worker,
            dim=model.dim,
            batch_size=cfg.batch_size,
            max_wait_s=cfg.max_wait_ms / 1000,
        )
        if self.query_model is not None:
            self.query_batcher = MicroBatcher(
                runs(self.query_model), self.query_worker, dim=model.dim,
                batch_size=cfg.query_lane_max_texts, max_wait_s=0.0)
        self.log.info(
            "embedder.model", model_id=model.model_id, dim=model.dim, batch_size=cfg.batch_size
        )

    async def background(self) -> None:
        assert self.batcher is not None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.batcher.run)
            if self.query_batcher is not None:
                tg.start_soon(self.query_batcher.run)

    async def teardown(self) -> None:
        self.worker.close()
        self.query_worker.close()

    @endpoint(lambda s: s.embed, request=Embed)
    async def embed(self, request: Embed, ctx: Context) -> Embedded:
        model, batcher, cache = self.model, self.batcher, self.cache
        assert model is not None
        assert batcher is not None
        assert cache is not None
        if request.model is not None and request.model != model.model_id:
            raise BadRequestError(
                f"this embedder serves {model.model_id!r}, not {request.model!r}: vectors of "
                "different models are not comparable; send to an embedder of that model",
                details={"served": model.model_id, "requested": request.model},
            )
        if len(request.texts) > self.config.max_texts:
            raise TooLargeError(
                f"{len(request.texts)} texts in one request; the limit is "
                f"{self.config.max_texts} (embedder.max_texts): split it"
            )
        keys = cache.keys(request.texts)
        cached = await cache.get_many(keys)
        # each distinct missing text is embedded once, however often it repeats
        todo: dict[str, str] = {}
        for key, text, hit in zip(keys, request.texts, cached, strict=True):
            if hit is None:
                todo.setdefault(key, text)
        fresh: dict[str, bytes] = {}
        if todo:
            lane = self.query_batcher if (
                request.lane == "query" and len(todo) <= self.config.query_lane_max_texts
            ) else None
            vectors = await (lane or batcher).embed(list(todo.values()))
            fresh = {k: vectors[i].astype("<f4").tobytes() for i, k in enumerate(todo)}
            await cache.put_many(list(fresh.items()))
        hits = sum(1 for v in cached if v is not None)
        self._lookups.labels(self.name, "hit").inc(hits)
        ctx.annotate(texts=len(keys), cache_hits=hits, model=model.model_id)
        self._lookups.labels(self.name, "miss").inc(len(keys) - hits)
        body = b"".join(v if v is not None else fresh[k] for k, v in zip(keys, cached, strict=True))
        return Embedded(
            request_id=request.request_id,
            model_id=model.model_id,
            dim=model.dim,
            vectors=body,
            cache_hits=hits,
        )
