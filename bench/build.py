"""Searches while HNSW is built: in the process (``optimize()``) vs in a child on a copy.

N points (SciFact chunk texts with their BM25 vectors and the ingestor's payload
shape, random unit dense vectors: build and search cost do not depend on their
values) are written to a fresh qdrant-edge shard with the retriever's default
tuning, twice. Then, while the first shard is built in this process and the
second one in a child process (as the retriever does), a thread searches the
shard being built (dense, top 30, one at a time) and another thread ticks every
millisecond. Reported per variant: the build's wall time, the searches answered
during it and their p50/p99/max latency, ``searches_over_2s`` (slower than the
retriever's ``search_timeout_s``: the query would have come back without that
shard), and ``python_stall_ms_max``, the longest the ticking thread went
without running (the whole process stood still: every actor in it).
``child_*`` adds the copy (writes wait, searches go on) and the swap (searches
wait) times.

    python -m bench.build [--points N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench._data import SCIFACT
from bench._stats import dumps, percentile
from ragbus.actors.ingestor import chunk_text, read_file
from ragbus.actors.retriever.store import EdgeStore, Record, build_command
from ragbus.runtime.text import BM25Encoder

SEARCH_TIMEOUT_MS = 2000.0


def _records(n: int) -> list[Record]:
    rng = np.random.default_rng(7)
    bm25 = BM25Encoder()
    out: list[Record] = []
    for doc in read_file(SCIFACT / "corpus.jsonl").documents:
        chunked = chunk_text(doc.text)
        for c in chunked.chunks:
            v = rng.standard_normal(384).astype(np.float32)
            w = bm25.document(c.text)
            out.append(Record(
                id=str(uuid.UUID(int=len(out) + 1)), dense=(v / np.linalg.norm(v)).tolist(),
                sparse=w if w.indices else None,
                payload={"doc_id": doc.doc_id, "title": doc.title, "text": c.text,
                         "parent_text": chunked.parent_of(c).text, "parent_id": doc.doc_id,
                         "version": 1, "tags": [], "deleted": False,
                         "created_at": "2024-01-01T00:00:00Z"}))
            if len(out) == n:
                return out
    return out


class _Watch:
    """Searches ``store`` and ticks in threads of their own until stopped."""

    def __init__(self, store: EdgeStore, query: list[float]) -> None:
        self.latencies: list[float] = []
        self.stall = 0.0
        #: held by the search thread per search: the swap must not run beside one (the
        #: retriever runs both on its one store thread)
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._search, args=(store, query)),
                         threading.Thread(target=self._tick)]

    def __enter__(self) -> _Watch:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def _search(self, store: EdgeStore, query: list[float]) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            with self.lock:
                store.search(query, limit=30)
            self.latencies.append((time.perf_counter() - started) * 1000)
            time.sleep(0.005)

    def _tick(self) -> None:
        last = time.perf_counter()
        while not self._stop.is_set():
            time.sleep(0.001)
            now = time.perf_counter()
            self.stall = max(self.stall, (now - last) * 1000)
            last = now

    def report(self, prefix: str, seconds: float) -> dict[str, Any]:
        lat = self.latencies or [float("nan")]
        return {
            f"{prefix}_build_s": round(seconds, 2),
            f"{prefix}_searches_during": len(self.latencies),
            f"{prefix}_search_ms_p50": round(percentile(lat, 50), 2),
            f"{prefix}_search_ms_p99": round(percentile(lat, 99), 2),
            f"{prefix}_search_ms_max": round(max(lat), 1),
            f"{prefix}_searches_over_2s": sum(x > SEARCH_TIMEOUT_MS for x in self.latencies),
            f"{prefix}_python_stall_ms_max": round(self.stall, 1),
        }


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def run(points: int) -> dict[str, Any]:
    records = _records(points)
    query = records[0].dense
    out: dict[str, Any] = {"points": len(records)}
    with tempfile.TemporaryDirectory(prefix="ragbus-build-") as tmp:
        inproc = EdgeStore(Path(tmp) / "inproc")
        child = EdgeStore(Path(tmp) / "child")
        for store in (inproc, child):
            store.ensure_collection(384)
            store.upsert(records)
        out["needs_index"] = child.needs_index
        out["index_threshold_points"] = child.index_threshold_points
        with _Watch(inproc, query) as watch:
            seconds = _timed(inproc.optimize)
        out.update(watch.report("inproc", seconds))
        with _Watch(child, query) as watch:
            started = time.perf_counter()
            target = child.begin_build()
            copy_s = _timed(lambda: child.copy_to(target))
            done = subprocess.run(build_command(target, child.tuning), capture_output=True,
                                  check=True)
            with watch.lock:
                swap_s = _timed(lambda: child.install(target))
            seconds = time.perf_counter() - started
        child.discard_replaced()
        out.update(watch.report("child", seconds))
        out["child_copy_s"] = round(copy_s, 3)
        out["child_swap_s"] = round(swap_s, 3)
        out["child_rebuilt"] = json.loads(done.stdout)["rebuilt"]
        for store in (inproc, child):
            latencies = []
            for _ in range(50):
                started = time.perf_counter()
                store.search(query, limit=30)
                latencies.append((time.perf_counter() - started) * 1000)
            name = "inproc" if store is inproc else "child"
            out[f"{name}_search_ms_p50_after"] = round(percentile(latencies, 50), 2)
            store.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--points", type=int, default=13_088)
    args = parser.parse_args()
    print(dumps(run(args.points)))


if __name__ == "__main__":
    main()
