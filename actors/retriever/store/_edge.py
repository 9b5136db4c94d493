"""EdgeStore: the embedded qdrant-edge engine, in-process, one shard directory per store.

qdrant-edge has no collections: the shard directory *is* the collection. It never
optimizes on its own, so new points stay in brute-force segments until
``optimize()`` builds HNSW; the payload indexes are created with the shard so
that build can use them.

An HNSW build holds the GIL and the shard for its whole length (measured here:
10k points 12 s, 13k points 22 s with the machine busy; a search from another
thread and every other Python thread waited all that time). So the retriever
builds in another process, on a copy, and swaps the result in
(:meth:`EdgeStore.begin_build`, :meth:`EdgeStore.copy_to`, :func:`build_command`,
:meth:`EdgeStore.install`): the live shard keeps answering searches and taking
writes (brute force over what is not indexed yet), writes made meanwhile are
replayed onto the built copy, and the swap itself is a close, a few renames and
a load (~0.2-0.5 s for 13k points).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import islice
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

import qdrant_edge as qe

from ragbus.subjects import SparseVector

from . import _build
from ._build import edge_config
from ._edge_filter import to_edge_filter
from ._errors import (
    BackendError,
    CollectionMissingError,
    DimensionMismatchError,
    IncompatibleCollectionError,
    InvalidPointError,
    StoreClosedError,
    StoreError,
    StoreLockedError,
)
from ._filter import LIVE, Filter
from ._lock import LOCK_NAME, DirLock
from ._schema import DENSE, INDEXED_FIELDS, SPARSE, IndexKind
from ._tuning import EDGE_SEARCH, EdgeTuning, SearchTuning
from ._types import Hit, Page, Record, StoredPoint, check_id, check_sparse, plain_payload

if TYPE_CHECKING:
    from qdrant_edge import NamedVector

__all__ = ("EdgeStore", "build_command")

#: Points per engine call: bounds the memory of one conversion, not a tuning knob.
_BATCH: Final = 512
#: Written by qdrant-edge itself; the only place an existing shard states its vector size.
_CONFIG_FILE: Final = "edge_config.json"
_SCHEMA: Final = {
    IndexKind.KEYWORD: qe.PayloadSchemaType.Keyword,
    IndexKind.BOOL: qe.PayloadSchemaType.Bool,
    IndexKind.INTEGER: qe.PayloadSchemaType.Integer,
    IndexKind.DATETIME: qe.PayloadSchemaType.Datetime,
}
_DEFAULT_TUNING: Final = EdgeTuning()
#: the engine's indexing threshold when the tuning leaves it unset (qdrant's default):
#: a segment whose vectors pass it gets HNSW; ~6,700 points of 384 float32 dimensions
ENGINE_INDEXING_THRESHOLD_KB: Final = 10_000
#: beside the shard directory: a copy being built, and the old files during a swap
_BUILD_SUFFIX: Final = ".build"
_SWAP_SUFFIX: Final = ".swapping"


class EdgeStore:
    """A :class:`VectorStore` on a qdrant-edge shard directory.

    Opening takes an exclusive lock on ``path`` (raising :class:`StoreLockedError` if
    another store holds it) and loads the shard if one is there; ``ensure_collection``
    creates it otherwise. ``tuning`` applies on every open, so a restart can change
    thresholds without rebuilding the shard.
    """

    def __init__(
        self,
        path: str | PathLike[str],
        *,
        tuning: EdgeTuning = _DEFAULT_TUNING,
        search: SearchTuning = EDGE_SEARCH,
    ) -> None:
        self._path = Path(path)
        self._tuning = tuning
        self._params = _search_params(search)
        self._shard: qe.EdgeShard | None = None
        self._dim: int | None = None
        self._closed = False
        # writes since the last build (see needs_index) and, during a build, the operations
        # to replay onto the built copy
        self._unindexed = 0
        self._journal: list[tuple[qe.UpdateOperation, int]] | None = None
        self._path.mkdir(parents=True, exist_ok=True)
        self._lock = DirLock(self._path)
        self._lock.acquire()
        try:
            self._recover()
            if (self._path / _CONFIG_FILE).exists():
                self._dim = self._read_dim()
                self._shard = self._open(lambda: qe.EdgeShard.load(str(self._path), self._config()))
                info = self._shard.info()
                # one segment: never built (a built shard has its indexed segments plus an
                # appendable one); what a shard with more holds unindexed is not known
                self._unindexed = info.points_count if info.segments_count == 1 else 0
        except BaseException:
            self._lock.release()
            raise

    @property
    def path(self) -> Path:
        return self._path

    @property
    def dim(self) -> int | None:
        return self._dim

    @property
    def tuning(self) -> EdgeTuning:
        return self._tuning

    def ensure_collection(self, dim: int) -> None:
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self._check_open()
        shard = self._shard
        if shard is None:
            config = self._config(dim)
            shard = self._open(lambda: qe.EdgeShard.create(str(self._path), config))
            self._shard, self._dim = shard, dim
        elif self._dim != dim:
            raise DimensionMismatchError(f"edge store {self._path}", self._dim or 0, dim)
        with self._engine("create payload indexes"):
            present = shard.info().payload_schema
            for field, kind in INDEXED_FIELDS:
                info = present.get(field.value)
                if info is None:
                    shard.update(qe.UpdateOperation.create_field_index(field.value, _SCHEMA[kind]))
                elif info.data_type != _SCHEMA[kind]:
                    raise IncompatibleCollectionError(
                        f"{self._path} indexes {field.value!r} as {info.data_type}, not "
                        f"{kind.value}: use a new path, or re-ingest into a fresh one"
                    )

    def upsert(self, records: Iterable[Record]) -> None:
        shard = self._require()
        it = iter(records)
        while batch := list(islice(it, _BATCH)):
            points = [self._point(record) for record in batch]
            self._apply(shard, qe.UpdateOperation.upsert_points(points), "upsert points",
                        upserted=len(points))

    def delete(self, ids: Sequence[str]) -> None:
        shard = self._require()
        point_ids: list[qe.PointId] = [check_id(i) for i in ids]
        if point_ids:
            self._apply(shard, qe.UpdateOperation.delete_points(point_ids), "delete points")

    def set_payload(self, ids: Sequence[str], payload: Mapping[str, Any]) -> None:
        shard = self._require()
        point_ids: list[qe.PointId] = [check_id(i) for i in ids]
        changes = plain_payload(payload, "set_payload")
        if point_ids:
            self._apply(shard, qe.UpdateOperation.set_payload(point_ids, changes), "set payload")

    def search(
        self, query: Sequence[float] | SparseVector, *, limit: int = 10, filter: Filter = LIVE,
        payload: bool = True,
    ) -> list[Hit]:
        shard = self._require()
        params = None
        if isinstance(query, SparseVector):
            check_sparse(query)
            if not query.indices or limit <= 0:
                return []
            nearest = qe.Query.Nearest(qe.SparseVector(query.indices, query.values), using=SPARSE)
        else:
            vector = self._dense(list(query), "query")
            if limit <= 0:
                return []
            nearest, params = qe.Query.Nearest(vector, using=DENSE), self._params
        request = qe.QueryRequest(
            limit=limit,
            query=nearest,
            filter=to_edge_filter(filter),
            params=params,
            with_payload=payload,
            with_vector=False,
        )
        with self._engine("search"):
            found = shard.query(request)
        return [Hit(id=str(p.id), score=p.score, payload=p.payload or {}) for p in found]

    def retrieve(self, ids: Sequence[str]) -> list[StoredPoint]:
        shard = self._require()
        wanted = [check_id(i) for i in ids]
        if not wanted:
            return []
        point_ids: list[qe.PointId] = list(wanted)
        with self._engine("retrieve points"):
            found = {str(r.id): r.payload or {} for r in shard.retrieve(point_ids, True, False)}
        return [StoredPoint(id=i, payload=found[i]) for i in wanted if i in found]

    def scroll(self, *, filter: Filter = LIVE, limit: int = 100, offset: str | None = None) -> Page:
        shard = self._require()
        request = qe.ScrollRequest(
            offset=None if offset is None else check_id(offset),
            limit=limit,
            filter=to_edge_filter(filter),
            with_payload=True,
            with_vector=False,
        )
        with self._engine("scroll points"):
            records, after = shard.scroll(request)
        return Page(
            points=[StoredPoint(id=str(r.id), payload=r.payload or {}) for r in records],
            next_offset=None if after is None else str(after),
        )

    def count(self, filter: Filter = LIVE) -> int:
        shard = self._require()
        with self._engine("count points"):
            return shard.count(qe.CountRequest(exact=True, filter=to_edge_filter(filter)))

    def optimize(self) -> bool:
        """Build HNSW for segments over the indexing threshold, merge, vacuum deletions.

        Blocks for seconds at 10^4-10^5 points *holding the GIL* (every other thread
        of the process waits) and the shard (searches wait). Searches stay correct
        before it; they are just brute force. A server builds elsewhere instead:
        :meth:`begin_build`.
        """
        shard = self._require()
        with self._engine("optimize"):
            rebuilt: bool = shard.optimize()
        self._unindexed = 0
        return rebuilt

    # -- building elsewhere -------------------------------------------------------------

    @property
    def index_threshold_points(self) -> int:
        """Points of an unindexed segment past which the engine builds HNSW for it."""
        kb = self._tuning.indexing_threshold_kb or ENGINE_INDEXING_THRESHOLD_KB
        return max(1, kb * 1024 // (4 * (self._dim or 1)))

    @property
    def needs_index(self) -> bool:
        """Enough points written since the last build for the engine to index them.

        Below that an optimize finds nothing to build (a no-op of ~0.1 ms) and
        searches of those points stay brute force, which at that size costs about
        what HNSW does.
        """
        return self._dim is not None and self._unindexed >= self.index_threshold_points

    @property
    def building(self) -> bool:
        return self._journal is not None

    @property
    def build_path(self) -> Path:
        """Where :meth:`copy_to` puts the copy a build works on (beside the shard)."""
        return self._path.with_name(self._path.name + _BUILD_SUFFIX)

    def begin_build(self) -> Path:
        """Flush, and from now on keep every write for :meth:`install` to replay.

        Call with no write running; then :meth:`copy_to` (from any thread, searches
        may go on meanwhile, writes must wait for it), then a build of the copy in
        another process (:func:`build_command`), then :meth:`install` (or
        :meth:`abort_build`).
        """
        shard = self._require()
        with self._engine("flush"):
            shard.flush()
        self._journal = []
        target = self.build_path
        shutil.rmtree(target, ignore_errors=True)
        return target

    def copy_to(self, target: Path) -> None:
        """Copy the flushed shard's files to ``target`` (not the lock)."""
        shutil.copytree(self._path, target, ignore=shutil.ignore_patterns(LOCK_NAME))

    def flush(self) -> None:
        """Write everything to the shard's files (a backup copies them next, with no write
        in between)."""
        shard = self._require()
        with self._engine("flush"):
            shard.flush()

    def replace_with(self, source: Path) -> int:
        """Swap the shard files in ``source`` (a restored backup) in for this store's and
        load them; returns the points they hold. ``source`` is emptied and removed;
        without a shard in it (a backup of a shard never written to) the store is left
        empty.

        Searches must not run meanwhile (call it on the thread that runs them) and no
        build may be running. The files replaced are moved aside first and moved back
        if the new ones do not load, so a bad archive leaves the store as it was.
        """
        self._check_open()
        if self._journal is not None:
            raise StoreError(f"an index build of {self._path} is running: retry when it is done")
        has_shard = (source / _CONFIG_FILE).exists()
        new_dim = _dim_of(source) if has_shard else None
        aside = self._path.with_name(self._path.name + _SWAP_SUFFIX)
        shutil.rmtree(aside, ignore_errors=True)
        shard, self._shard = self._shard, None
        if shard is not None:
            with self._engine("close for the restore"):
                shard.flush()
                shard.close()
        aside.mkdir()
        for entry in self._path.iterdir():
            if entry.name != LOCK_NAME:
                entry.rename(aside / entry.name)
        try:
            for entry in sorted(source.iterdir(), key=lambda e: e.name == _CONFIG_FILE):
                if entry.name != LOCK_NAME:
                    entry.rename(self._path / entry.name)
            self._dim = new_dim
            if has_shard:
                self._shard = self._open(
                    lambda: qe.EdgeShard.load(str(self._path), self._config()))
        except BaseException:
            for entry in self._path.iterdir():
                if entry.name != LOCK_NAME:
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            for entry in aside.iterdir():
                entry.rename(self._path / entry.name)
            shutil.rmtree(aside, ignore_errors=True)
            self._dim = self._read_dim() if (self._path / _CONFIG_FILE).exists() else None
            if self._dim is not None:
                self._shard = self._open(
                    lambda: qe.EdgeShard.load(str(self._path), self._config()))
            raise
        shutil.rmtree(aside, ignore_errors=True)
        shutil.rmtree(source, ignore_errors=True)
        if self._shard is None:
            self._unindexed = 0
            return 0
        info = self._shard.info()
        self._unindexed = info.points_count if info.segments_count == 1 else 0
        return int(info.points_count)

    def abort_build(self) -> None:
        """Forget the build: writes are no longer kept, the copy is deleted."""
        self._journal = None
        shutil.rmtree(self.build_path, ignore_errors=True)

    def install(self, built: Path) -> int:
        """Swap the built copy in for the live files and replay the writes made since
        :meth:`begin_build` onto it; returns how many operations were replayed.

        Searches must not run meanwhile (call it on the thread that runs them): the
        shard is closed, the old files are moved aside, the built ones moved in
        (the config file last, so a crash in between is recognised on the next
        open and undone), the shard loaded and the writes replayed. The old files
        stay aside until :meth:`discard_replaced`.
        """
        shard = self._require()
        journal = self._journal or []
        aside = self._path.with_name(self._path.name + _SWAP_SUFFIX)
        shutil.rmtree(aside, ignore_errors=True)
        with self._engine("close for the swap"):
            shard.flush()
            shard.close()
        self._shard = None
        aside.mkdir()
        for entry in self._path.iterdir():
            if entry.name != LOCK_NAME:
                entry.rename(aside / entry.name)
        for entry in sorted(built.iterdir(), key=lambda e: e.name == _CONFIG_FILE):
            if entry.name != LOCK_NAME:
                entry.rename(self._path / entry.name)
        shutil.rmtree(built, ignore_errors=True)
        self._shard = self._open(lambda: qe.EdgeShard.load(str(self._path), self._config()))
        self._journal = None
        self._unindexed = 0
        for operation, upserted in journal:
            self._apply(self._shard, operation, "replay a write made during the build",
                        upserted=upserted)
        return len(journal)

    def discard_replaced(self) -> None:
        """Delete the files :meth:`install` replaced (slow for a large shard: call it
        off the thread that runs searches)."""
        shutil.rmtree(self._path.with_name(self._path.name + _SWAP_SUFFIX), ignore_errors=True)

    def _recover(self) -> None:
        """Finish or undo a swap a crash interrupted; drop a build left behind."""
        shutil.rmtree(self.build_path, ignore_errors=True)
        aside = self._path.with_name(self._path.name + _SWAP_SUFFIX)
        if not aside.is_dir():
            return
        if not (self._path / _CONFIG_FILE).exists():  # the new files were not all in: undo
            for entry in self._path.iterdir():
                if entry.name != LOCK_NAME:
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            for entry in aside.iterdir():
                entry.rename(self._path / entry.name)
        shutil.rmtree(aside, ignore_errors=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        shard, self._shard = self._shard, None
        try:
            if shard is not None:
                with self._engine("close"):
                    shard.flush()
                    shard.close()
        finally:
            self._lock.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"dim={self._dim}"
        return f"EdgeStore({str(self._path)!r}, {state})"

    # -- internals -------------------------------------------------------------------------

    def _config(self, dim: int | None = None) -> qe.EdgeConfig:
        """The shard's config; without ``dim`` the dense vector is inherited from disk."""
        return edge_config(config_params(self._tuning, dim))

    def _read_dim(self) -> int:
        """Dense size of an existing shard, after checking it is cosine."""
        return _dim_of(self._path)

    def _open(self, factory: Callable[[], qe.EdgeShard]) -> qe.EdgeShard:
        try:
            return factory()
        except Exception as exc:
            text = str(exc)
            if "WouldBlock" in text:
                raise StoreLockedError(
                    f"{self._path} is already open by a process that bypasses EdgeStore's lock; "
                    f"close it first"
                ) from exc
            if "ncompatible" in text:
                raise IncompatibleCollectionError(
                    f"{self._path} was created with another configuration ({text}): "
                    f"use a new path, or re-ingest into a fresh one"
                ) from exc
            raise BackendError(f"qdrant-edge could not open {self._path}: {text}") from exc

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"edge store {self._path} is closed: open a new EdgeStore")

    def _require(self) -> qe.EdgeShard:
        self._check_open()
        if self._shard is None:
            raise CollectionMissingError(
                f"no shard at {self._path} yet: call ensure_collection(dim) first"
            )
        return self._shard

    def _dense(self, vector: list[float], what: str) -> list[float]:
        if len(vector) != self._dim:
            raise InvalidPointError(
                f"{what} has {len(vector)} dimensions but {self._path} holds {self._dim}"
            )
        return vector

    def _point(self, record: Record) -> qe.Point:
        vectors: dict[str, NamedVector] = {DENSE: self._dense(record.dense, f"record {record.id}")}
        if record.sparse is not None:
            vectors[SPARSE] = qe.SparseVector(record.sparse.indices, record.sparse.values)
        return qe.Point(record.id, vectors, plain_payload(record.payload, f"record {record.id}"))

    def _apply(self, shard: qe.EdgeShard, operation: qe.UpdateOperation, action: str, *,
               upserted: int = 0) -> None:
        with self._engine(action):
            shard.update(operation)
        self._unindexed += upserted
        if self._journal is not None:
            self._journal.append((operation, upserted))

    @contextmanager
    def _engine(self, action: str) -> Iterator[None]:
        """Give the engine's bare ``Exception`` a class; ours pass through untouched."""
        try:
            yield
        except StoreError:
            raise
        except Exception as exc:
            raise BackendError(f"qdrant-edge could not {action} in {self._path}: {exc}") from exc


def config_params(tuning: EdgeTuning, dim: int | None = None) -> dict[str, Any]:
    """What :func:`~._build.edge_config` makes the shard's config from (plain JSON)."""
    return {"dim": dim, "dense": DENSE, "sparse": SPARSE, "hnsw_m": tuning.hnsw_m,
            "hnsw_ef_construct": tuning.hnsw_ef_construct,
            "full_scan_threshold_kb": tuning.full_scan_threshold_kb,
            "indexing_threshold_kb": tuning.indexing_threshold_kb,
            "search_threads": tuning.search_threads}


def _dim_of(path: Path) -> int:
    """Dense size of the shard at ``path``, after checking it is cosine."""
    try:
        config = json.loads((path / _CONFIG_FILE).read_text())
        dense = config["vectors"][DENSE]
        size, distance = dense["size"], dense["distance"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IncompatibleCollectionError(
            f"{path} holds no dense vector named {DENSE!r}: it was not created by "
            f"EdgeStore; use a new path"
        ) from exc
    if not isinstance(size, int) or distance != "Cosine":
        raise IncompatibleCollectionError(
            f"{path} holds {size}-dim {distance} vectors, not Cosine: it was not "
            f"created by EdgeStore; use a new path"
        )
    return size


def build_command(path: Path, tuning: EdgeTuning = _DEFAULT_TUNING) -> list[str]:
    """The command line that builds the shard copy at ``path`` in a new process."""
    return [sys.executable, _build.__file__, str(path), json.dumps(config_params(tuning))]


def _search_params(search: SearchTuning) -> qe.SearchParams | None:
    if search.hnsw_ef is None and not search.acorn and not search.exact:
        return None
    return qe.SearchParams(
        hnsw_ef=search.hnsw_ef,
        exact=search.exact,
        acorn=qe.AcornSearchParams(enable=True) if search.acorn else None,
    )
