"""The retriever actor, index side: the only writer of the vector store."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, Unpack

import anyio
import msgspec
from nats.js.api import ObjectMeta
from nats.js.errors import KeyNotFoundError, NotFoundError, ObjectNotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore
from prometheus_client import Counter, Gauge, Histogram

from ragbus.config import IN_MEMORY, Settings
from ragbus.runtime import (
    Actor,
    ActorOptions,
    AdaptiveLimit,
    BadRequestError,
    Client,
    Context,
    EndpointSpec,
    UnavailableError,
    WorkerThread,
    best_effort,
    endpoint,
)
from ragbus.runtime.archive import (
    fetch_object,
    open_backup_bucket,
    pack,
    sha256_file,
    store_object,
    unpack,
)
from ragbus.runtime.jetstream import store_index_update, through_elections
from ragbus.runtime.vectors import wire_vector
from ragbus.subjects import (
    AuditKind,
    IndexApplied,
    IndexUpdate,
    Query,
    Restore,
    Restored,
    Search,
    SearchHit,
    SearchResult,
    Snapshot,
    Snapshotted,
    Sources,
    Trim,
    corpus_bucket,
    index_stream,
    retrieval_cache_bucket,
    shard_snapshots_bucket,
)

from ._cache import CachedSources, RetrievalCache, answer_scope, retrieval_key
from ._filters import to_store_filter
from ._query import EarlyEmbedding, Ranking, gather, prepare, to_sources
from ._replica import LagMetrics, ShardLog, default_replica_id
from .store import (
    DimensionMismatchError,
    EdgeStore,
    EdgeTuning,
    Filter,
    Hit,
    InvalidPointError,
    Record,
    StoreError,
    VectorStore,
    build_command,
)

__all__ = ("Retriever",)


def _hit_payload(payload: dict[str, Any], shard: str, widen: bool) -> dict[str, object]:
    """A stored payload as a hit carries it: its shard named, the parent's text only when
    the query widens to parents (it is the larger part of a reply)."""
    out = dict(payload)
    if not widen:
        out.pop("parent_text", None)
    out["_shard"] = shard
    return out


def ctx_shard(subject: str) -> str:
    """The shard a per-shard backup subject names (its last token)."""
    return subject.rsplit(".", 1)[-1]


class Retriever(Actor):
    """Owns one vector store per shard it serves; applies index updates, serves searches."""

    name = "retriever"

    def __init__(self, settings: Settings | None = None,
                 **options: Unpack[ActorOptions]) -> None:
        super().__init__(settings, **options)
        self.config = self.settings.retriever
        self.worker = WorkerThread("retriever")
        cfg = self.config
        #: queries in flight at this first hop (None: admission by slots only)
        self.query_limit = None if cfg.query_latency_target_ms is None else AdaptiveLimit(
            cfg.query_latency_target_ms / 1000, minimum=cfg.query_min_inflight,
            maximum=max(cfg.query_min_inflight, self.concurrency))
        self.stores: dict[str, VectorStore] = {}
        self._last_write: dict[str, float] = {}
        # writes to a shard wait while a build copies its files
        self._writes = {shard: anyio.Lock() for shard in self.config.shards}
        # a backup's copy and a build's swap never overlap
        self._files = {shard: anyio.Lock() for shard in self.config.shards}
        self._retry_build_at: dict[str, float] = {}
        self.optimizations = 0
        self._building = 0
        self.cache: RetrievalCache | None = None
        self._corpus: KeyValue | None = None
        self._models: dict[str, str] = {}  # shard -> its model, as last read or written
        self.logs: dict[str, ShardLog] = {}  # shard -> this replica's reading of its updates
        self.replica_id = self.config.replica_id or default_replica_id(self._root)
        self._snapshots: ObjectStore | None = None
        self._snapshot_seq: dict[str, int] = {}
        m = self.metrics
        labels = ["actor", "shard", "replica"]
        self._lag_messages = m.get(Gauge, "ragbus_index_apply_lag_messages",
                                   "Index updates stored and not yet applied by this replica",
                                   labels)
        self._lag_seconds = m.get(Gauge, "ragbus_index_apply_lag_seconds",
                                  "While behind: how long the last update applied had waited",
                                  labels)
        self._apply_delay = m.get(Histogram, "ragbus_index_apply_delay_seconds",
                                  "From an index update's storing to its apply here", labels,
                                  buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                                           5, 10, 30, 60))
        self._applied_seq = m.get(Gauge, "ragbus_index_applied_sequence",
                                  "Index stream sequence of the last update applied", labels)
        self._skipped = m.get(Counter, "ragbus_index_updates_skipped",
                              "Index updates no replica can apply (logged), by shard",
                              ["actor", "shard"])
        self._cache_lookups = self.metrics.get(Counter, "ragbus_retrieval_cache",
                                               "Retrieval cache lookups by result",
                                               ["actor", "result"])

    def routes(self, spec: EndpointSpec) -> list[tuple[str, str]]:
        per_shard = {"index_apply": self.subjects.index_apply, "search": self.subjects.search,
                     "snapshot": self.subjects.snapshot_shard,
                     "restore": self.subjects.restore_shard}
        if spec.name in per_shard:
            # one subscription per shard; replicas of a shard share its queue group
            subject = per_shard[spec.name]
            return [(subject(shard), f"{self.name}-{shard}") for shard in self.config.shards]
        return super().routes(spec)

    @property
    def _root(self) -> Path:
        """Where the shard copies (edge) or their positions in the index stream live."""
        if self.config.backend == "server":
            return self.settings.data_root / "qdrant-positions"
        return Path(self.config.data_dir) if self.config.data_dir else \
            self.settings.data_root / "qdrant"

    def _open(self, shard: str) -> VectorStore:
        if self.config.backend == "server":
            from qdrant_client import QdrantClient

            from .store import ServerStore  # imports qdrant-client: only for this backend

            key = self.config.api_key.get() if self.config.api_key else None
            url = self.config.url
            assert url, "RetrieverSettings requires a url for the server backend"
            client = QdrantClient(":memory:") if url == IN_MEMORY \
                else QdrantClient(url=url, api_key=key)
            collection = f"{self.subjects.prefix.replace('.', '_')}_{shard}"
            return ServerStore(client, collection, owns_client=True)
        return EdgeStore(self._root / shard, tuning=EdgeTuning(
            indexing_threshold_kb=self.config.indexing_threshold_kb))

    async def setup(self) -> None:
        for shard in self.config.shards:
            try:
                self.stores[shard] = await self.worker.run(self._open, shard)
            except StoreError as exc:
                raise UnavailableError(f"shard {shard!r} cannot be opened: {exc}") from exc
        self._corpus = await self.ensure_kv(corpus_bucket(self.subjects))
        await self.ensure_stream(index_stream(self.subjects))
        if self.config.backend == "edge":
            self._snapshots = await self.ensure_object_store(
                shard_snapshots_bucket(self.subjects))
        self._root.mkdir(parents=True, exist_ok=True)
        for shard in self.config.shards:
            labels = (self.name, shard, self.replica_id)
            log = ShardLog(
                self.nc, self.subjects, shard, self.replica_id, self._root / shard,
                partial(self._apply_update, shard), batch=self.config.apply_batch,
                lag=LagMetrics(messages=self._lag_messages.labels(*labels),
                               seconds=self._lag_seconds.labels(*labels),
                               delay=self._apply_delay.labels(*labels),
                               applied=self._applied_seq.labels(*labels)),
                log=self.log)
            await log.open()
            self.logs[shard] = log
            await self._start_from_snapshot(shard, log)
            # before subscribing: a replica far behind never answers a search
            await log.catch_up()
        if self.config.cache:
            self.cache = RetrievalCache(await self.ensure_kv(
                retrieval_cache_bucket(self.subjects, self.config.cache_ttl_s)))

    async def corpus_versions(self, shards: list[str]) -> dict[str, int] | None:
        """Each shard's corpus version, read from the KV bucket the ingestor bumps (None
        when the bucket does not answer in time: a cluster electing a leader).

        Read on every query (a KV get is ~0.3 ms, and runs beside the cache lookup), not
        kept from ``rag.corpus.version`` messages: a retriever that missed one while it
        reconnected would serve stale cached retrievals and answers until it restarted.
        """
        return await best_effort(lambda: self._read_versions(shards))

    async def _read_versions(self, shards: list[str]) -> dict[str, int]:
        assert self._corpus is not None, "setup() has not run"
        corpus = self._corpus
        found: dict[str, int] = {}

        async def one(shard: str) -> None:
            try:
                entry = await corpus.get(shard)
            except KeyNotFoundError:
                found[shard] = 0
            else:
                found[shard] = int(entry.value or b"0")

        async with anyio.create_task_group() as tg:
            for shard in shards:
                tg.start_soon(one, shard)
        return found

    async def teardown(self) -> None:
        for store in self.stores.values():
            await self.worker.run(store.close)
        self.worker.close()

    async def background(self) -> None:
        """Build HNSW for a shard once enough of it is unindexed for the engine to build
        anything and writes to it have been quiet for ``optimize_idle_s``.

        A build holds the GIL and the shard for seconds to minutes, so it runs in
        another process on a copy (see ``EdgeStore``): this process keeps serving
        searches (brute force over the unindexed points) and writes meanwhile.
        Below the engine's indexing threshold (~6,700 points of 384 dimensions by
        default) there is nothing to build and nothing is started.
        """
        async with anyio.create_task_group() as tg:
            for shard, log in self.logs.items():
                tg.start_soon(log.follow)
                if self.config.snapshot_interval_s and isinstance(self.stores[shard],
                                                                   EdgeStore):
                    tg.start_soon(self._snapshot_every, shard)
            await self._build_when_due()

    async def _build_when_due(self) -> None:
        idle = self.config.optimize_idle_s
        while True:
            await anyio.sleep(max(0.05, idle / 4))
            now = time.monotonic()
            for shard, store in list(self.stores.items()):
                if (isinstance(store, EdgeStore) and store.needs_index
                        and now - self._last_write.get(shard, 0.0) >= idle
                        and now >= self._retry_build_at.get(shard, 0.0)):
                    await self._build(shard, store)

    async def _build(self, shard: str, store: EdgeStore) -> None:
        """One index build of ``shard`` in a child process, swapped in when done."""
        self._building += 1
        started = time.perf_counter()
        try:
            try:
                async with self._writes[shard]:  # no write between the flush and the copy
                    target = await self.worker.run(store.begin_build)
                    await anyio.to_thread.run_sync(store.copy_to, target)
                copied = time.perf_counter()
                done = await anyio.run_process(build_command(target, store.tuning),
                                               check=False)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self.worker.run(store.abort_build)
                raise
            if done.returncode != 0:
                await self.worker.run(store.abort_build)
                self._retry_build_at[shard] = time.monotonic() + 60
                self.log.error("retriever.build_failed", shard=shard, code=done.returncode,
                               error=done.stderr.decode(errors="replace")[-2000:])
                return
            built = time.perf_counter()
            async with self._files[shard]:
                replayed = await self.worker.run(store.install, target)
            swapped = time.perf_counter()
            await anyio.to_thread.run_sync(store.discard_replaced)
        finally:
            self._building -= 1
        report = msgspec.json.decode(done.stdout.strip().splitlines()[-1]) \
            if done.stdout.strip() else {}
        self.optimizations += int(bool(report.get("rebuilt")))
        self.log.info("retriever.index_built", shard=shard, rebuilt=report.get("rebuilt"),
                      copy_s=round(copied - started, 3), build_s=round(built - copied, 3),
                      swap_s=round(swapped - built, 3), replayed=replayed,
                      points=await self.worker.run(store.count))

    @property
    def optimized(self) -> bool:
        """No index build is running or due (benchmarks wait for it: searches of points
        not indexed yet are brute force)."""
        return self._building == 0 and not any(
            isinstance(store, EdgeStore) and store.needs_index for store in self.stores.values())

    def _store(self, shard: str) -> VectorStore:
        try:
            return self.stores[shard]
        except KeyError:
            raise BadRequestError(f"this retriever does not serve shard {shard!r}; it serves "
                             f"{', '.join(self.stores)}") from None

    async def shard_model(self, shard: str) -> str | None:
        """The embedding model whose vectors the shard holds (None: none recorded yet).

        Kept in KV ``rag_corpus`` under ``<shard>.model``, beside the corpus version, so
        every replica of the shard and every ingestor sees the same one.
        """
        assert self._corpus is not None, "setup() has not run"
        try:
            entry = await self._corpus.get(f"{shard}.model")
        except KeyNotFoundError:
            return None
        model = entry.value.decode() if entry.value else None
        if model is not None:
            self._models[shard] = model
        return model

    async def _check_model(self, shard: str, model: str, store: VectorStore) -> None:
        """One model per shard: vectors of two models in one space would rank nonsense."""
        assert self._corpus is not None
        current = await self.shard_model(shard)
        if current == model:
            return
        if current is not None and store.dim is not None and await self.worker.run(
                store.count, Filter(include_deleted=True)) > 0:
            raise BadRequestError(
                f"shard {shard!r} holds vectors of embedding model {current!r}; these come "
                f"from {model!r}, and the two cannot share a vector space. To switch models, "
                "ingest into a new collection (ragbus ingest PATH --collection NEW) and "
                "query that, or purge this shard's documents first",
                details={"shard_model": current, "update_model": model})
        await self._corpus.put(f"{shard}.model", model.encode())
        self._models[shard] = model

    @endpoint(lambda s: s.index_apply("default"), request=IndexUpdate)
    async def index_apply(self, request: IndexUpdate, ctx: Context) -> IndexApplied:
        """An update checked, stored in the index stream, and answered once this replica
        has applied it (the ingestor stores its updates itself; tools and benchmarks that
        want to know the update is searchable here ask this)."""
        store = self._store(request.collection)
        for point in request.upserts:
            wire_vector(point.vector, dim=request.dim, what=f"point {point.id}'s vector")
        try:
            for point in request.upserts:  # a Record checks the id and sparse vector
                Record(id=point.id, dense=[], sparse=point.sparse)
        except (InvalidPointError, StoreError) as exc:
            raise BadRequestError(str(exc)) from None
        if request.upserts:
            if store.dim is not None and store.dim != request.dim:
                raise BadRequestError(
                    str(DimensionMismatchError(f"shard {request.collection!r}", store.dim,
                                               request.dim)),
                    details={"model_id": request.model_id})
            await self._check_model(request.collection, request.model_id, store)
        seq = await store_index_update(self.nc, self.subjects, request)
        await self.logs[request.collection].wait_for(seq)
        points = await self.worker.run(store.count) if store.dim is not None else 0
        return IndexApplied(request_id=request.request_id, upserted=len(request.upserts),
                            deleted=len(request.deletes),
                            patched=sum(len(p.ids) for p in request.patches), points=points)

    async def _apply_update(self, shard: str, request: IndexUpdate) -> None:
        """Apply one update from the index stream to this replica's copy of ``shard``.

        What the store refuses for the update itself (another vector size, a bad point)
        is refused the same on every replica: it is logged and skipped, so all copies
        stay equal. Anything else (the disk, the engine) raises: the batch is applied
        again from the position.
        """
        store = self._store(shard)
        records = []
        try:
            for point in request.upserts:
                vector = wire_vector(point.vector, dim=request.dim,
                                     what=f"point {point.id}'s vector")
                records.append(Record(id=point.id, dense=vector.tolist(), sparse=point.sparse,
                                      payload=point.payload))
        except (InvalidPointError, BadRequestError, ValueError) as exc:
            self._skip(shard, request, exc)
            return

        def apply() -> None:
            if records:
                if store.dim != request.dim:  # creates, or raises DimensionMismatchError
                    store.ensure_collection(request.dim)
                store.upsert(records)
            if store.dim is None:
                return  # nothing was ever written: nothing to delete or patch
            if request.deletes:
                store.delete(request.deletes)
            for patch in request.patches:
                store.set_payload(patch.ids, patch.payload)

        try:
            async with self._writes[shard]:
                await self.worker.run(apply)
        except (DimensionMismatchError, InvalidPointError) as exc:
            self._skip(shard, request, exc)
            return
        if records or request.deletes or request.patches:
            self._last_write[shard] = time.monotonic()

    def _skip(self, shard: str, request: IndexUpdate, exc: Exception) -> None:
        self._skipped.labels(self.name, shard).inc()
        self.log.error("retriever.update_refused", shard=shard, request_id=request.request_id,
                       model_id=request.model_id, error=str(exc))

    # -- snapshots for new replicas ------------------------------------------------------

    async def _snapshot_every(self, shard: str) -> None:
        """Put a snapshot of ``shard`` into the snapshots bucket every
        ``snapshot_interval_s`` once ``snapshot_min_updates`` updates are newer than the
        newest there. Any replica may: the newest sequence wins."""
        log = self.logs[shard]
        while True:
            await anyio.sleep(self.config.snapshot_interval_s)
            if log.applied - await self._newest_snapshot(shard) < self.config.snapshot_min_updates:
                continue
            try:
                await self.publish_snapshot(shard)
            except Exception as exc:  # the next round tries again
                self.log.warning("retriever.snapshot_failed", shard=shard, error=repr(exc))

    async def _newest_snapshot(self, shard: str) -> int:
        """The stream sequence the newest snapshot of ``shard`` covers (0: none)."""
        found = await self._snapshot_info(shard)
        return found[0] if found else 0

    async def _snapshot_info(self, shard: str) -> tuple[int, dict[str, object]] | None:
        assert self._snapshots is not None
        obs = self._snapshots
        try:
            info = await through_elections(lambda: obs.get_info(shard))
        except (ObjectNotFoundError, NotFoundError):
            return None
        try:
            meta = json.loads(info.description or "{}")
            if meta.get("stream") != self.logs[shard].stream_id:
                return None  # of a stream made before this one
            return int(meta["seq"]), meta
        except (ValueError, KeyError, TypeError):
            return None

    async def publish_snapshot(self, shard: str) -> int | None:
        """A snapshot of this replica's copy of ``shard`` into the snapshots bucket, with the
        stream sequence it covers; that sequence (None: the copy is empty, or a snapshot
        as new is there already)."""
        store = self._edge(shard)
        log = self.logs[shard]
        assert self._snapshots is not None
        obs = self._snapshots
        with tempfile.TemporaryDirectory(prefix=".snapshot-", dir=store.path.parent) as tmp:
            copy, archive = Path(tmp) / "shard", Path(tmp) / "shard.tar.gz"
            async with log.lock, self._writes[shard], self._files[shard]:
                seq = log.applied
                if store.dim is None or seq <= await self._newest_snapshot(shard):
                    return None
                await self.worker.run(store.flush)
                await anyio.to_thread.run_sync(store.copy_to, copy)
                points = await self.worker.run(store.count)
            await anyio.to_thread.run_sync(pack, copy, archive)
            meta = ObjectMeta(name=shard, description=json.dumps(
                {"seq": seq, "stream": log.stream_id, "points": points, "dim": store.dim,
                 "replica": self.replica_id}))

            async def put() -> None:
                with archive.open("rb") as f:
                    await obs.put(shard, f, meta=meta)

            with anyio.fail_after(300):
                await through_elections(put)
        self._snapshot_seq[shard] = seq
        self.log.info("retriever.shard_snapshot", shard=shard, seq=seq, points=points,
                      bytes=archive.stat().st_size if archive.exists() else None)
        return seq

    async def _start_from_snapshot(self, shard: str, log: ShardLog) -> None:
        """A replica with an empty copy and no position starts from the newest snapshot
        of its shard, then replays only the stream's tail after it."""
        store = self.stores[shard]
        if self._snapshots is None or not isinstance(store, EdgeStore) or log.applied \
                or store.dim is not None:
            return
        found = await self._snapshot_info(shard)
        if found is None:
            return
        seq, _ = found
        obs = self._snapshots
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=".restore-", dir=store.path.parent) as tmp:
            archive, files = Path(tmp) / "shard.tar.gz", Path(tmp) / "shard"

            async def get() -> None:
                with archive.open("wb") as f:
                    await obs.get(shard, writeinto=f)  # checks the object's digest

            with anyio.fail_after(300):
                await through_elections(get)
            await anyio.to_thread.run_sync(unpack, archive, files)
            async with log.lock, self._writes[shard], self._files[shard]:
                points = await self.worker.run(store.replace_with, files)
                log.moved_to(seq)
        self._last_write[shard] = time.monotonic()  # a build follows if one is due
        self.log.info("retriever.started_from_snapshot", shard=shard, seq=seq, points=points,
                      seconds=round(time.monotonic() - started, 3))

    def _edge(self, shard: str) -> EdgeStore:
        store = self._store(shard)
        if not isinstance(store, EdgeStore):
            raise BadRequestError(f"shard {shard!r} is on a Qdrant server (retriever.backend = "
                                  "server): back it up with Qdrant's own snapshots")
        return store

    @endpoint(lambda s: s.snapshot_shard("default"), request=Snapshot)
    async def snapshot(self, request: Snapshot, ctx: Context) -> Snapshotted:
        """A consistent copy of one shard, packed into the backup bucket as ``name``.

        Writes to the shard wait from the flush to the end of the copy (as for a
        build), searches go on meanwhile; the copy is packed and sent after the
        writes are let go.
        """
        shard = ctx_shard(ctx.msg.subject)
        store = self._edge(shard)
        obs = await open_backup_bucket(self.nc, self.subjects)
        with tempfile.TemporaryDirectory(prefix=".backup-", dir=store.path.parent) as tmp:
            copy, archive = Path(tmp) / "shard", Path(tmp) / "shard.tar.gz"
            async with self._writes[shard], self._files[shard]:
                if store.dim is not None:
                    await self.worker.run(store.flush)
                    await anyio.to_thread.run_sync(store.copy_to, copy)
                points = await self.worker.run(store.count) if store.dim is not None else 0
            if not copy.exists():
                copy.mkdir()  # never written to: an empty archive says so
            await anyio.to_thread.run_sync(pack, copy, archive)
            digest = await anyio.to_thread.run_sync(sha256_file, archive)
            await store_object(obs, request.name, archive)
            size = archive.stat().st_size
        model = await self.shard_model(shard)
        self.log.info("retriever.snapshot", shard=shard, points=points, bytes=size)
        return Snapshotted(request_id=request.request_id, name=request.name, bytes=size,
                           sha256=digest, details={"shard": shard, "points": points,
                                                   "dim": store.dim, "model": model})

    @endpoint(lambda s: s.restore_shard("default"), request=Restore)
    async def restore(self, request: Restore, ctx: Context) -> Restored:
        """Replace one shard with the archive ``name`` from the backup bucket.

        Refused if the shard holds any point (deleted ones too) unless ``force``; the
        archive's digest is checked before anything is replaced.
        """
        shard = ctx_shard(ctx.msg.subject)
        store = self._edge(shard)
        held = await self._refuse_unless_empty(shard, store, request.force)
        if request.dry_run:
            return Restored(request_id=request.request_id,
                            details={"shard": shard, "points": held})
        obs = await open_backup_bucket(self.nc, self.subjects)
        with tempfile.TemporaryDirectory(prefix=".restore-", dir=store.path.parent) as tmp:
            archive, files = Path(tmp) / "shard.tar.gz", Path(tmp) / "shard"
            await fetch_object(obs, request.name, archive, sha256=request.sha256)
            await anyio.to_thread.run_sync(unpack, archive, files)
            log = self.logs[shard]
            async with log.lock, self._writes[shard], self._files[shard]:
                held = await self._refuse_unless_empty(shard, store, request.force)
                try:
                    points = await self.worker.run(store.replace_with, files)
                except StoreError as exc:
                    raise BadRequestError(f"shard {shard!r} cannot be restored: {exc}") from None
                finally:
                    shutil.rmtree(files, ignore_errors=True)
                # the restored copy is the shard as of now: updates stored before it are
                # not applied on top (on this replica; see README, Replicated shards)
                log.moved_to(await self._last_stored(shard))
        self._models.pop(shard, None)  # the restored corpus bucket says which model
        self._last_write[shard] = time.monotonic()  # a build follows if one is due
        self.log.info("retriever.restored", shard=shard, points=points, replaced=held)
        return Restored(request_id=request.request_id,
                        details={"shard": shard, "points": points, "replaced": held})

    async def _last_stored(self, shard: str) -> int:
        """The stream sequence of the newest update stored for ``shard`` (0: none)."""
        js = self.nc.jetstream()
        try:
            found = await through_elections(lambda: js.get_last_msg(
                self.subjects.index_stream, self.subjects.index_log(shard)))
        except NotFoundError:
            return 0
        return int(found.seq or 0)

    async def _refuse_unless_empty(self, shard: str, store: EdgeStore, force: bool) -> int:
        """The points ``shard`` holds (deleted ones too); refused if any, unless ``force``."""
        held = await self.worker.run(store.count, Filter(include_deleted=True)) \
            if store.dim is not None else 0
        if held and not force:
            raise BadRequestError(
                f"shard {shard!r} holds {held} points: restoring would replace them. "
                "Restore into an empty system, or pass --force",
                details={"shard": shard, "points": held})
        return held

    @endpoint(lambda s: s.search("default"), request=Search)
    async def search(self, request: Search, ctx: Context) -> SearchResult:
        """One shard's dense and keyword rankings for a query (the scatter target); with
        ``min_version``, once this replica has applied the updates up to it."""
        store = self._store(request.shard)
        log = self.logs[request.shard]
        if request.min_version:
            await log.wait_for(request.min_version)
        applied = log.applied
        if request.dense is not None and request.model is not None:
            # the model seen last, read again only when it disagrees (it changes only when
            # the shard is emptied): no KV read on a search's path
            held = self._models.get(request.shard)
            if held != request.model:
                held = await best_effort(lambda: self.shard_model(request.shard))
            if held is not None and held != request.model:
                raise BadRequestError(
                    f"shard {request.shard!r} holds vectors of embedding model {held!r}, but "
                    f"the question was embedded by {request.model!r}: searching one with the "
                    "other would rank nonsense. Serve the shard's model in the embedder "
                    "(embedder.model), or re-ingest into a new collection with the new one",
                    details={"shard_model": held, "query_model": request.model})
        flt = to_store_filter(request.filters)
        limit = max(1, min(request.limit, 1000))
        dense = wire_vector(request.dense, what="dense").tolist() if request.dense else None
        sparse = request.sparse if request.sparse and request.sparse.indices else None

        def run() -> tuple[list[Hit], list[Hit]]:
            if store.dim is None:
                return [], []  # nothing ingested into this shard yet
            if dense is not None and len(dense) != store.dim:
                raise BadRequestError(f"query vector has {len(dense)} dimensions; shard "
                                 f"{request.shard!r} holds {store.dim}")
            light = not request.payload
            d = store.search(dense, limit=limit, filter=flt, payload=not light) \
                if dense is not None else []
            s = store.search(sparse, limit=limit, filter=flt, payload=not light) \
                if sparse is not None else []
            return d, s

        d, s = await self.worker.run(run)

        def hits(found: list[Hit]) -> list[SearchHit]:
            if not request.payload:
                return [SearchHit(chunk_id=h.id, score=h.score, payload={"_shard": request.shard})
                        for h in found]
            return [SearchHit(chunk_id=h.id, score=h.score,
                              payload=_hit_payload(h.payload, request.shard, request.widen))
                    for h in found]

        return SearchResult(request_id=request.request_id, shard=request.shard, dense=hits(d),
                            sparse=hits(s), applied=applied)

    async def fetch(self, shard: str, ids: Sequence[str],
                    widen: bool) -> dict[str, dict[str, object]]:
        """The payloads of ``ids`` in a shard served here, as a search gives them (see
        ``_query.settle``); soft-deleted points are left out, as searches leave them out."""
        store = self._store(shard)
        points = await self.worker.run(store.retrieve, list(ids))
        return {p.id: _hit_payload(p.payload, shard, widen) for p in points
                if not p.payload.get("deleted")}

    @endpoint(lambda s: s.query, request=Query, accept=True, limit=lambda a: a.query_limit)
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
        ranking = Ranking(fusion=cfg.fusion, dense_weight=cfg.dense_weight, rrf_k=cfg.rrf_k,
                          per_doc=cfg.per_doc, candidates=cfg.candidates)
        key = retrieval_key(question=prepared.text, filters=prepared.filters,
                            top_k=request.top_k, mode=request.retrieval, widen=request.widen,
                            shards=shards, ranking=repr(ranking))
        cached: CachedSources | None = None
        versions: dict[str, int] = {}

        async def lookup() -> None:
            nonlocal cached
            if self.cache is not None:
                cached = await self.cache.get(key)

        # the versions validate a cached retrieval, scope a cached answer, and are the
        # least each shard's replica must have applied before it answers: a query after a
        # finished ingest job sees what the job wrote, whichever replica answers
        known = False

        async def read_versions() -> None:
            nonlocal known
            found = await self.corpus_versions(shards)
            known = found is not None
            versions.update(found or {})

        timings: dict[str, float] = {}
        to_cache: CachedSources | None = None
        async with anyio.create_task_group() as early:
            # the question's vector needs neither the versions nor the cache: asked for
            # beside them, it is on its way while they are read
            embedding = EarlyEmbedding() if request.retrieval != "keyword" else None
            if embedding is not None:
                early.start_soon(embedding.ask, ctx, self.subjects, prepared.text)
            async with anyio.create_task_group() as tg:
                tg.start_soon(lookup)
                tg.start_soon(read_versions)
            if cached is not None and (not known or cached.versions != versions):
                cached = None  # computed before a re-ingest (or nobody can say): stale
            if cached is not None:
                early.cancel_scope.cancel()  # the vector comes with the cached retrieval
                self._cache_lookups.labels(self.name, "hit").inc()
                sources, missing, vector = cached.sources, cached.missing_shards, cached.vector
                timings["retrieval_cache_hit"] = 1.0
            else:
                if self.cache is not None:
                    self._cache_lookups.labels(self.name, "miss").inc()
                gathered = await gather(
                    ctx, Client(self.nc, self.subjects), self.subjects, request, prepared,
                    shards, search_timeout_s=cfg.search_timeout_s, ranking=ranking,
                    local={s: partial(self.search, ctx=ctx) for s in shards if s in self.stores},
                    fetch=self.fetch,
                    min_versions={s: max(versions.get(s, 0), request.min_corpus_version or 0)
                                  for s in shards},
                    embedding=embedding)
                sources = to_sources(gathered.hits, request.top_k, widen=request.widen)
                missing, vector = gathered.missing, gathered.vector
                timings.update(gathered.timings_ms)
                if self.cache is not None and known:
                    to_cache = CachedSources(sources=sources, missing_shards=missing,
                                             vector=vector, versions=versions)
        timings["retrieval"] = (time.perf_counter() - started) * 1000
        ctx.annotate(shards=len(shards), hits=len(sources), missing=len(missing),
                     mode=request.retrieval, cache_hit=cached is not None)
        await ctx.publish(request.reply_to, Sources(request_id=request.request_id,
                                                    sources=sources, missing_shards=missing))
        await ctx.hand_off(self.subjects.trim, Trim(
            request_id=request.request_id, deadline=ctx.deadline, trace=ctx.trace,
            reply_to=request.reply_to, question=prepared.text, sources=sources,
            session_id=request.session_id, generate=request.generate,
            provider=request.provider, timings_ms=timings,
            # a partial answer (a shard missing), or one whose corpus versions nobody could
            # read, is not cached
            cache_scope=None if missing or not known else answer_scope(
                filters=prepared.filters, shards=versions),
            question_vector=vector), hint="start the context-trimmer")
        if to_cache is not None and self.cache is not None:  # after the hand-off: no client
            # waits for it
            await self.cache.put(key, to_cache)
