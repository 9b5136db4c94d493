"""The vector store, specified once and run against every backend on real engines.

Backends: qdrant-edge in a temp dir, qdrant-client's in-memory mode, and a real
Qdrant server when ``QDRANT_URL`` is set (skipped, visibly, otherwise). The
geometry is tiny and known: point ``i`` lies on axis ``i`` of a 16-dim space.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
import qdrant_edge
from qdrant_client import QdrantClient, models

from ragbus.actors.retriever.store import (
    CollectionMissingError,
    DimensionMismatchError,
    EdgeStore,
    EdgeTuning,
    Filter,
    IncompatibleCollectionError,
    InvalidFilterError,
    InvalidPointError,
    Record,
    ServerStore,
    StoreClosedError,
    StoreLockedError,
    StoreUnavailableError,
    VectorStore,
    build_command,
)
from ragbus.subjects import SparseVector
from tests.support.ports import free_port

DIM = 16
N = 8
QDRANT_URL = os.environ.get("QDRANT_URL", "")
NAMESPACE = uuid.UUID("6f1c2d3e-0000-4000-8000-000000000000")
JAN_1 = datetime(2024, 1, 1, tzinfo=UTC)


def pid(i: int) -> str:
    return str(uuid.uuid5(NAMESPACE, f"chunk-{i}"))


def axis(i: int, *, tilt: int | None = None) -> list[float]:
    vector = [0.0] * DIM
    vector[i] = 1.0
    if tilt is not None:
        vector[tilt] = 0.1
    return vector


def payload(i: int) -> dict[str, Any]:
    tags = [t for t, keep in (("even", i % 2 == 0), ("three", i % 3 == 0)) if keep]
    return {
        "doc_id": f"doc-{i // 2}",
        "tags": tags,
        "deleted": False,
        "version": i,
        "created_at": (JAN_1 + timedelta(days=i)).isoformat().replace("+00:00", "Z"),
        "text": f"chunk number {i}",
        "chunk": i % 2,
    }


def records() -> list[Record]:
    return [Record(id=pid(i), dense=axis(i), payload=payload(i)) for i in range(N)]


# -- backends --------------------------------------------------------------------------------


class Backend:
    """Opens stores on one underlying location, so a test can close and reopen it."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self._path = tmp_path / "shard"
        self._client = QdrantClient(location=":memory:") if kind == "memory" else None
        self._collection = f"ragbus_test_{uuid.uuid4().hex}"
        self._opened: list[VectorStore] = []

    def open(self) -> VectorStore:
        store: VectorStore
        if self.kind == "edge":
            store = EdgeStore(self._path)
        elif self._client is not None:
            store = ServerStore(self._client, self._collection)
        else:
            store = ServerStore.connect(QDRANT_URL, self._collection)
        self._opened.append(store)
        return store

    def cleanup(self) -> None:
        for store in self._opened:
            store.close()
        if self.kind == "server":
            client = QdrantClient(url=QDRANT_URL)
            client.delete_collection(self._collection)
            client.close()
        if self._client is not None:
            self._client.close()


@pytest.fixture(
    params=[
        "edge",
        "memory",
        pytest.param(
            "server",
            marks=pytest.mark.skipif(
                not QDRANT_URL, reason="QDRANT_URL is not set: no Qdrant server to test against"
            ),
        ),
    ]
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = Backend(request.param, tmp_path)
    yield b
    b.cleanup()


@pytest.fixture
def store(backend: Backend) -> VectorStore:
    """A store holding the N axis points."""
    s = backend.open()
    s.ensure_collection(DIM)
    s.upsert(records())
    return s


def ids_of(found: list[Any]) -> list[str]:
    return [point.id for point in found]


def listed(s: VectorStore, flt: Filter) -> set[str]:
    return set(ids_of(s.scroll(filter=flt, limit=100).points))


# -- behaviour shared by every backend -----------------------------------------------------


def test_search_returns_nearest_first(store: VectorStore) -> None:
    hits = store.search(axis(3, tilt=4), limit=3)

    assert ids_of(hits)[:2] == [pid(3), pid(4)]
    assert hits[0].score == pytest.approx(1 / np.sqrt(1.01), abs=1e-4)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert hits[0].payload == payload(3)


def test_a_search_without_payloads_ranks_the_same_points_with_empty_payloads(
    store: VectorStore,
) -> None:
    full = store.search(axis(3, tilt=4), limit=5)
    light = store.search(axis(3, tilt=4), limit=5, payload=False)

    assert [(h.id, h.score) for h in light] == [(h.id, h.score) for h in full]
    assert all(h.payload == {} for h in light)
    assert all(h.payload for h in full)


def test_upsert_same_ids_twice_keeps_count_and_replaces_payload(store: VectorStore) -> None:
    store.upsert(records())
    store.upsert([Record(id=pid(0), dense=axis(0), payload={"doc_id": "renamed"})])

    assert store.count() == N
    assert store.retrieve([pid(0)])[0].payload == {"doc_id": "renamed"}


@pytest.mark.parametrize(
    ("flt", "keep"),
    [
        pytest.param(Filter(tags=("even",)), lambda i: i % 2 == 0, id="one-tag"),
        pytest.param(
            Filter(tags=("even", "three")), lambda i: i % 2 == 0 or i % 3 == 0, id="tags-any-of"
        ),
        pytest.param(Filter(tags=()), lambda i: False, id="no-tags-match-nothing"),
        pytest.param(Filter(doc_ids=("doc-1", "doc-3")), lambda i: i // 2 in (1, 3), id="doc-ids"),
        pytest.param(Filter(version=5), lambda i: i == 5, id="version-equal"),
        pytest.param(
            Filter(min_version=2, max_version=4), lambda i: 2 <= i <= 4, id="version-range"
        ),
        pytest.param(Filter(min_version=6), lambda i: i >= 6, id="version-from"),
        pytest.param(
            Filter(
                created_since=JAN_1 + timedelta(days=2), created_before=JAN_1 + timedelta(days=5)
            ),
            lambda i: 2 <= i < 5,
            id="date-half-open",
        ),
        pytest.param(
            # 01:00 on Jan 3 at +02:00 is 23:00 UTC on Jan 2.
            Filter(created_before=datetime(2024, 1, 3, 1, tzinfo=timezone(timedelta(hours=2)))),
            lambda i: i < 2,
            id="date-with-offset",
        ),
        pytest.param(
            Filter(tags=("even",), min_version=3), lambda i: i % 2 == 0 and i >= 3, id="combined"
        ),
    ],
)
def test_filters_select_exactly_the_matching_points(
    store: VectorStore, flt: Filter, keep: Callable[[int], bool]
) -> None:
    expected = {pid(i) for i in range(N) if keep(i)}

    assert listed(store, flt) == expected
    assert store.count(flt) == len(expected)
    assert set(ids_of(store.search(axis(0), limit=N, filter=flt))) == expected


def test_soft_deleted_points_match_nothing_unless_asked(store: VectorStore) -> None:
    store.set_payload([pid(3)], {"deleted": True})

    assert pid(3) not in ids_of(store.search(axis(3), limit=N))
    assert pid(3) not in listed(store, Filter())
    assert store.count() == N - 1
    assert store.count(Filter(tags=("three",))) == 2  # 0 and 6; 3 is gone
    with_deleted = Filter(include_deleted=True)
    assert store.search(axis(3), limit=1, filter=with_deleted)[0].id == pid(3)
    assert store.count(with_deleted) == N
    [kept] = store.retrieve([pid(3)])
    assert kept.payload["deleted"] is True
    assert kept.payload["text"] == "chunk number 3"  # set_payload merges


def test_delete_removes_points_for_good(store: VectorStore) -> None:
    store.delete([pid(1), pid(2), str(uuid.uuid4())])

    assert store.count(Filter(include_deleted=True)) == N - 2
    assert store.retrieve([pid(1), pid(2)]) == []
    assert pid(1) not in ids_of(store.search(axis(1), limit=N))


def test_retrieve_keeps_the_order_asked_and_skips_missing(store: VectorStore) -> None:
    found = store.retrieve([pid(5), str(uuid.uuid4()), pid(0)])

    assert ids_of(found) == [pid(5), pid(0)]
    assert found[1].payload == payload(0)


def test_scroll_pages_through_everything_once(store: VectorStore) -> None:
    seen: list[str] = []
    offset: str | None = None
    sizes: list[int] = []
    while True:
        page = store.scroll(limit=3, offset=offset)
        sizes.append(len(page.points))
        seen += ids_of(page.points)
        if page.next_offset is None:
            break
        offset = page.next_offset

    assert sizes == [3, 3, 2]
    assert sorted(seen) == sorted(pid(i) for i in range(N))


def test_sparse_search_ranks_the_rare_term_first(backend: Backend) -> None:
    """Both backends support sparse vectors with the IDF modifier, so no skip here.

    Point 0 carries the common term 1 with weight 2; point 1 only the rare term 7 with
    weight 1. Without IDF point 0 would win (2 > 1); with it, term 1 is nearly worthless.
    """
    s = backend.open()
    s.ensure_collection(DIM)
    rare = Record(id=pid(1), dense=axis(1), sparse=SparseVector(indices=[7], values=[1.0]))
    common = [
        Record(id=pid(i), dense=axis(i),
               sparse=SparseVector(indices=[1, 100 + i], values=[2.0, 1.0]))
        for i in (0, *range(2, 10))
    ]
    s.upsert([*common, rare])

    hits = s.search(SparseVector(indices=[1, 7], values=[1.0, 1.0]), limit=3)

    assert hits[0].id == pid(1)
    assert hits[0].score > 3 * hits[1].score
    assert s.search(SparseVector(indices=[42], values=[1.0])) == []
    assert s.search(SparseVector(indices=[], values=[])) == []


def test_ensure_collection_is_idempotent_and_refuses_another_dimension(
    backend: Backend,
) -> None:
    s = backend.open()
    s.ensure_collection(DIM)
    s.upsert(records())
    s.ensure_collection(DIM)

    with pytest.raises(DimensionMismatchError, match=r"holds 16-dimensional vectors but 32") as err:
        s.ensure_collection(32)
    assert "re-ingest" in str(err.value)
    assert s.count() == N
    assert s.dim == DIM


def test_payload_values_are_stored_as_json_alike_on_every_backend(store: VectorStore) -> None:
    """A datetime is stored as its RFC 3339 string, so the date filter sees it."""
    when = datetime(2030, 5, 1, 12, tzinfo=UTC)
    store.upsert([Record(id=pid(0), dense=axis(0), payload={"created_at": when, "ref": NAMESPACE})])
    store.set_payload([pid(1)], {"created_at": when})

    [point] = store.retrieve([pid(0)])
    assert point.payload == {"created_at": "2030-05-01T12:00:00Z", "ref": str(NAMESPACE)}
    assert listed(store, Filter(created_since=when)) == {pid(0), pid(1)}
    with pytest.raises(InvalidPointError, match="not JSON-serializable"):
        store.set_payload([pid(0)], {"blob": object()})


def test_malformed_input_is_refused_before_the_engine(store: VectorStore) -> None:
    with pytest.raises(InvalidPointError, match="dimensions"):
        store.upsert([Record(id=pid(0), dense=[1.0, 0.0])])
    with pytest.raises(InvalidPointError, match="dimensions"):
        store.search([1.0, 0.0])
    with pytest.raises(InvalidPointError, match="not a UUID"):
        store.delete(["chunk-1"])
    with pytest.raises(InvalidPointError, match="not canonical"):
        store.retrieve([pid(0).upper()])
    assert store.count() == N


def test_operations_before_ensure_collection_say_what_to_do(backend: Backend) -> None:
    s = backend.open()

    assert s.dim is None
    with pytest.raises(CollectionMissingError, match=r"ensure_collection\(dim\) first"):
        s.count()
    with pytest.raises(CollectionMissingError):
        s.upsert(records())


def test_closed_store_refuses_work(backend: Backend) -> None:
    s = backend.open()
    s.ensure_collection(DIM)
    s.close()
    s.close()

    with pytest.raises(StoreClosedError):
        s.search(axis(0))


def test_store_works_from_a_worker_thread(store: VectorStore) -> None:
    """The actor opens the store on the loop thread and calls it from one worker thread."""
    with ThreadPoolExecutor(max_workers=1) as worker:
        hits = worker.submit(store.search, axis(2)).result()
    assert hits[0].id == pid(2)


# -- the filter type -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_version": 3, "max_version": 2}, "range is empty"),
        ({"version": 1, "min_version": 2}, "outside"),
        ({"created_since": datetime(2024, 1, 1)}, "no timezone"),
        ({"created_since": JAN_1, "created_before": JAN_1}, "interval is empty"),
    ],
)
def test_filter_refuses_contradictions(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidFilterError, match=message):
        Filter(**kwargs)


def test_filter_and_records_decode_from_the_wire() -> None:
    flt = msgspec.json.decode(
        b'{"tags": ["a"], "created_since": "2024-01-01T00:00:00Z"}', type=Filter
    )
    assert flt == Filter(tags=("a",), created_since=JAN_1)
    with pytest.raises(msgspec.ValidationError, match="not a UUID"):
        msgspec.json.decode(b'{"id": "x", "dense": [1.0]}', type=Record)
    with pytest.raises(InvalidPointError, match="2 indices but 1 values"):
        Record(id=pid(1), dense=[1.0], sparse=SparseVector(indices=[1, 2], values=[1.0]))


# -- edge only -------------------------------------------------------------------------------


def test_edge_reopen_keeps_points_payloads_and_indexes(tmp_path: Path) -> None:
    with EdgeStore(tmp_path) as first:
        first.ensure_collection(DIM)
        first.upsert(records())
        first.set_payload([pid(0)], {"deleted": True})

    with EdgeStore(tmp_path) as again:
        assert again.dim == DIM
        assert again.count() == N - 1
        assert again.search(axis(4), limit=1)[0].id == pid(4)
        again.ensure_collection(DIM)
        assert again.count(Filter(tags=("even",))) == 3


def test_edge_second_opener_is_refused_until_the_first_closes(tmp_path: Path) -> None:
    first = EdgeStore(tmp_path)
    first.ensure_collection(DIM)

    with pytest.raises(StoreLockedError, match=r"already open \(holder pid \d+\).*own path"):
        EdgeStore(tmp_path)

    first.close()
    with EdgeStore(tmp_path) as second:
        assert second.dim == DIM


def test_edge_opener_outside_ragbus_is_reported_as_locked(tmp_path: Path) -> None:
    with EdgeStore(tmp_path) as s:
        s.ensure_collection(DIM)
    raw = qdrant_edge.EdgeShard.load(str(tmp_path))
    try:
        with pytest.raises(StoreLockedError, match="bypasses"):
            EdgeStore(tmp_path)
    finally:
        raw.close()


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(
            qdrant_edge.EdgeConfig(
                vectors={"dense": qdrant_edge.EdgeVectorParams(DIM, qdrant_edge.Distance.Cosine)}
            ),
            id="no-sparse-vector",
        ),
        pytest.param(
            qdrant_edge.EdgeConfig(
                vectors={"dense": qdrant_edge.EdgeVectorParams(DIM, qdrant_edge.Distance.Dot)},
                sparse_vectors={
                    "bm25": qdrant_edge.EdgeSparseVectorParams(modifier=qdrant_edge.Modifier.Idf)
                },
            ),
            id="dot-distance",
        ),
    ],
)
def test_edge_refuses_a_shard_it_did_not_create(
    tmp_path: Path, config: qdrant_edge.EdgeConfig
) -> None:
    qdrant_edge.EdgeShard.create(str(tmp_path), config).close()

    with pytest.raises(IncompatibleCollectionError, match="use a new path"):
        EdgeStore(tmp_path)
    with EdgeStore(tmp_path / "fresh") as fresh:  # the refused open let go of its lock
        fresh.ensure_collection(DIM)


def test_edge_dimension_mismatch_after_reopen(tmp_path: Path) -> None:
    with EdgeStore(tmp_path) as s:
        s.ensure_collection(DIM)
    with EdgeStore(tmp_path) as s, pytest.raises(DimensionMismatchError,
                                                 match="new collection or path"):
        s.ensure_collection(384)


def test_edge_filtered_recall_after_optimize(tmp_path: Path) -> None:
    """Thresholds of 1 KB force HNSW on every segment and on every filtered search."""
    rng = np.random.default_rng(7)
    n, queries = 2000, 50
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    tags = rng.integers(0, 5, n)
    deleted = rng.random(n) < 0.1
    ids = [pid(i) for i in range(n)]
    tuning = EdgeTuning(indexing_threshold_kb=1, full_scan_threshold_kb=1)
    with EdgeStore(tmp_path, tuning=tuning) as s:
        s.ensure_collection(DIM)
        s.upsert(
            Record(
                id=ids[i],
                dense=vectors[i].tolist(),
                payload={"tags": [f"t{tags[i]}"], "deleted": bool(deleted[i])},
            )
            for i in range(n)
        )
        assert s.optimize() is True

        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        recall = []
        for q in rng.standard_normal((queries, DIM)).astype(np.float32):
            scores = unit @ (q / np.linalg.norm(q))
            scores[(tags != 1) | deleted] = -np.inf
            truth = {ids[j] for j in np.argsort(-scores)[:10]}
            hits = s.search(q.tolist(), limit=10, filter=Filter(tags=("t1",)))
            recall.append(len(truth & set(ids_of(hits))) / 10)

    assert float(np.mean(recall)) >= 0.95


def _points(rng: np.random.Generator, start: int, n: int) -> list[Record]:
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    return [Record(id=pid(start + i), dense=vectors[i].tolist(), payload={"n": start + i})
            for i in range(n)]


def test_edge_needs_an_index_only_past_the_engines_threshold(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    tuning = EdgeTuning(indexing_threshold_kb=4)  # 4 KB of 16 float32s: 64 points
    with EdgeStore(tmp_path, tuning=tuning) as s:
        s.ensure_collection(DIM)
        assert s.index_threshold_points == 64
        s.upsert(_points(rng, 0, 63))
        assert not s.needs_index  # an optimize would find nothing to build
        s.upsert(_points(rng, 63, 1))
        assert s.needs_index
        assert s.optimize() is True
        assert not s.needs_index
    # the default threshold is the engine's, in points of the shard's size
    with EdgeStore(tmp_path / "default") as s:
        s.ensure_collection(384)
        assert s.index_threshold_points == 10_000 * 1024 // (4 * 384)
    # reopened never built (one segment): its points count as unindexed
    with EdgeStore(tmp_path / "unbuilt", tuning=tuning) as s:
        s.ensure_collection(DIM)
        s.upsert(_points(rng, 0, 100))
    with EdgeStore(tmp_path / "unbuilt", tuning=tuning) as s:
        assert s.needs_index


def test_edge_builds_in_another_process_while_the_live_shard_serves(tmp_path: Path) -> None:
    """The copy is built by a child process; meanwhile the live shard answers searches and
    takes writes, and those writes are replayed onto the built copy when it is swapped in."""
    rng = np.random.default_rng(5)
    tuning = EdgeTuning(indexing_threshold_kb=4)
    with EdgeStore(tmp_path / "s", tuning=tuning) as s:
        s.ensure_collection(DIM)
        s.upsert(_points(rng, 0, 300))
        assert s.needs_index
        target = s.begin_build()
        s.copy_to(target)
        child = subprocess.Popen(build_command(target, tuning), stdout=subprocess.PIPE)
        # served meanwhile: searches, an upsert, a soft delete, a hard delete
        query = rng.standard_normal(DIM).tolist()
        assert len(s.search(query, limit=5)) == 5
        s.upsert(_points(rng, 300, 20))
        s.set_payload([pid(1)], {"deleted": True})
        s.delete([pid(2)])
        out, _ = child.communicate(timeout=120)
        assert child.returncode == 0
        assert msgspec.json.decode(out)["rebuilt"] is True
        assert s.install(target) == 3  # the three writes, replayed
        s.discard_replaced()
        assert s.count(filter=Filter()) == 318  # 320 written, one deleted, one soft-deleted
        assert {p.id for p in s.retrieve([pid(1), pid(2), pid(310)])} == {pid(1), pid(310)}
        assert [h.id for h in s.search(query, limit=400)].count(pid(1)) == 0  # soft-deleted
        assert not s.needs_index  # 20 new points: below the threshold
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no copy left behind
    with EdgeStore(tmp_path / "s", tuning=tuning) as s:
        assert s.count(filter=Filter()) == 318


def test_edge_undoes_a_swap_that_a_crash_interrupted(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    with EdgeStore(tmp_path / "s") as s:
        s.ensure_collection(DIM)
        s.upsert(_points(rng, 0, 10))
    # the crash came after the live files were moved aside, before the new ones were in
    aside = tmp_path / "s.swapping"
    aside.mkdir()
    for entry in (tmp_path / "s").iterdir():
        if entry.name != ".ragbus-store.lock":
            entry.rename(aside / entry.name)
    (tmp_path / "s" / "segments").mkdir()  # part of the new files
    (tmp_path / "s.build").mkdir()  # and the copy the build worked on
    with EdgeStore(tmp_path / "s") as s:
        assert s.count(filter=Filter()) == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_edge_abandoned_build_keeps_the_live_shard(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    with EdgeStore(tmp_path / "s", tuning=EdgeTuning(indexing_threshold_kb=4)) as s:
        s.ensure_collection(DIM)
        s.upsert(_points(rng, 0, 100))
        s.copy_to(s.begin_build())
        assert s.building
        s.upsert(_points(rng, 100, 5))
        s.abort_build()
        assert not s.building
        assert not s.build_path.exists()
        assert s.count(filter=Filter()) == 105


def test_edge_replace_with_a_copy_serves_the_copy_and_refuses_a_bad_one(
        tmp_path: Path) -> None:
    """A restore: a flushed copy of one shard swapped in for another's files; files that
    do not load leave the store as it was."""
    with EdgeStore(tmp_path / "a") as a:
        a.ensure_collection(DIM)
        a.upsert(records())
        a.flush()
        a.copy_to(tmp_path / "copy")
    with EdgeStore(tmp_path / "b") as b:
        b.ensure_collection(DIM)
        b.upsert([Record(id=pid(0), dense=axis(1), payload=payload(0))])
        assert b.replace_with(tmp_path / "copy") == N
        assert b.dim == DIM
        assert b.count() == N
        assert b.search(axis(4), limit=1)[0].id == pid(4)
        assert not (tmp_path / "copy").exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "edge_config.json").write_text('{"vectors": {}}')
        with pytest.raises(IncompatibleCollectionError):
            b.replace_with(broken)
        assert b.count() == N
        b.upsert([Record(id=pid(N), dense=axis(N), payload=payload(N))])  # still writable
    with EdgeStore(tmp_path / "b") as reopened:
        assert reopened.count() == N + 1


def test_edge_replace_with_an_empty_copy_empties_the_store(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with EdgeStore(tmp_path / "s") as s:
        s.ensure_collection(DIM)
        s.upsert(records())
        assert s.replace_with(tmp_path / "empty") == 0
        assert s.dim is None
        s.ensure_collection(DIM)
        assert s.count() == 0


# -- server only -----------------------------------------------------------------------------


def test_server_unreachable_raises_unavailable() -> None:
    port = free_port()
    # No version check: it runs in a thread of its own and warns from there.
    client = QdrantClient(url=f"http://127.0.0.1:{port}", timeout=2, check_compatibility=False)
    with ServerStore(client, "chunks", owns_client=True) as s:
        with pytest.raises(StoreUnavailableError, match="unreachable"):
            s.ensure_collection(DIM)
        with pytest.raises(StoreUnavailableError):
            s.count()


def test_server_refuses_a_collection_it_did_not_create() -> None:
    client = QdrantClient(location=":memory:")
    client.create_collection(
        "chunks",
        vectors_config={"dense": models.VectorParams(size=DIM, distance=models.Distance.DOT)},
    )
    with (
        ServerStore(client, "chunks", owns_client=True) as s,
        pytest.raises(IncompatibleCollectionError, match="not Cosine"),
    ):
        s.ensure_collection(DIM)


def test_server_local_path_admits_one_client(tmp_path: Path) -> None:
    with (
        ServerStore.connect(str(tmp_path), "chunks"),
        pytest.raises(StoreLockedError, match="another Qdrant client"),
    ):
        ServerStore.connect(str(tmp_path), "chunks")
