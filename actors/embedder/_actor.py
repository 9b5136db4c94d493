"""The embedder actor: ``Embed`` in, ``Embedded`` out, cached and micro-batched.

Two lanes: bulk (ingest chunks, compression sentences; batches of up to
``batch_size`` on all cores) and query (a question's vector: a second model
instance on a thread of its own with ``query_threads`` threads). A batch cannot be
interrupted once it runs, so a priority inside one queue would still leave a
question waiting up to a whole bulk batch (1.5-2 s); a lane of its own leaves it
waiting for nothing but CPU.

Loading the models is most of a restarted embedder's time to serving (seconds on a
busy machine), so :meth:`Embedder.prewarm` loads them in a supervising parent's warm
spare, before any replica dies, into a process-level cache keyed by every argument
of the load; :meth:`Embedder.setup` takes them from there when the key matches and
loads afresh otherwise (the settings changed since), so a preloaded model is always
one the replica would have loaded itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, Unpack

import anyio
import numpy as np
from nats.js.api import KeyValueConfig, StorageType
from numpy.typing import NDArray
from prometheus_client import Counter, Histogram

from ragbus.config import EmbedderSettings, Settings
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


class _Lane(NamedTuple):
    """Every argument a lane's model is loaded with, its thread's nice value included
    (onnxruntime's pool threads inherit it when the model is loaded): the cache's key."""

    model: str
    batch_size: int
    threads: int | None
    spin_wait: bool
    nice: int


def _lanes(cfg: EmbedderSettings) -> dict[str, _Lane]:
    """The lanes ``cfg`` runs, by name: what setup and prewarm both load."""
    lanes = {"bulk": _Lane(cfg.model, cfg.batch_size, cfg.threads, cfg.spin_wait, cfg.bulk_nice)}
    if cfg.query_lane:
        lanes["query"] = _Lane(cfg.model, cfg.query_lane_max_texts, cfg.query_threads,
                               cfg.spin_wait, 0)  # a question's vector is not niced
    return lanes


def _load(lane: _Lane) -> EmbeddingModel:
    return EmbeddingModel.load(lane.model, batch_size=lane.batch_size, threads=lane.threads,
                               spin_wait=lane.spin_wait)


#: models :meth:`Embedder.prewarm` loaded and no setup has taken yet, by their lane
_PRELOADED: dict[_Lane, list[EmbeddingModel]] = {}


def _take_preloaded(lanes: dict[str, _Lane]) -> dict[str, EmbeddingModel]:
    """The preloaded models of ``lanes`` that match exactly; the cache is emptied, the
    rest dropped: one replica per process, so what this one does not take, none will
    (and a successor whose settings changed would otherwise hold two sets of models)."""
    taken = {name: _PRELOADED[lane].pop() for name, lane in lanes.items()
             if _PRELOADED.get(lane)}
    _PRELOADED.clear()
    return taken


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

    @classmethod
    def prewarm(cls, settings: Settings) -> None:
        """Load the models :meth:`setup` would under ``settings``, as it would: the same
        arguments, both lanes at once, the bulk one on a thread niced by
        ``embedder.bulk_nice`` so that its onnxruntime pool threads are niced too."""
        lanes = _lanes(settings.embedder)
        workers = {name: WorkerThread(f"embedder-prewarm-{name}", nice=lane.nice)
                   for name, lane in lanes.items()}
        try:
            loads = {name: workers[name].submit(_load, lane) for name, lane in lanes.items()}
            for name, load in loads.items():
                _PRELOADED.setdefault(lanes[name], []).append(load.result())
        finally:
            for worker in workers.values():  # the models keep their pool threads
                worker.close()

    async def setup(self) -> None:
        cfg = self.config
        lanes = _lanes(cfg)
        preloaded = _take_preloaded(lanes)
        loaded: dict[str, EmbeddingModel | Exception] = dict(preloaded)

        async def load(name: str, worker: WorkerThread) -> None:
            try:
                loaded[name] = await worker.run(_load, lanes[name])
            except Exception as exc:  # raised below as it is, not inside a group
                loaded[name] = exc

        # both lanes load at once, each on its own thread: a restarted embedder serves
        # again that much sooner (a load is mostly single-threaded session setup)
        async with anyio.create_task_group() as tg:
            for name, worker in (("bulk", self.worker), ("query", self.query_worker)):
                if name in lanes and name not in preloaded:
                    tg.start_soon(load, name, worker)
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
        self.log.info(  # preloaded: the lanes whose model a prewarm loaded
            "embedder.model", model_id=model.model_id, dim=model.dim, batch_size=cfg.batch_size,
            preloaded=sorted(preloaded))

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
