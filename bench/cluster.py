"""Replicated index shards on a 3-node cluster, with nodes killed during the run.

Three embedded nats-server nodes (``nats.replicas`` 3), two retriever replica
processes of shard ``default``, each with its own data dir. The benchmark stores
``--updates`` index updates (one point each, random 64-dim vectors: what a replica
applies does not depend on their values) while one task searches the shard without
pause (``--rate`` per second, so the kills fall while updates are stored);
meanwhile it kills -9 the JetStream meta leader, brings the node back, then
kills -9 the index stream's leader. At the end it waits for both replicas to have
applied everything, stops them, and counts the points each copy holds.

It measures:

* ``queries``: searches sent; ``answered``; ``failed_with_code`` (by code);
  ``hung``: no answer nor error within twice their 3 s timeout.
* ``ingest_docs``: updates stored; ``ingest_lost``: updates the emptiest replica
  does not hold; ``ingest_dup``: updates stored in the stream more than once, or
  points held more than once.
* ``leader_failover_s``: the longer of the two kills' gaps between the last update
  stored before the kill and the first after it.
* ``replica_catchup_s``: a third replica process, started with an empty data dir
  once everything is stored: from its start (process start, imports included)
  until ``ragbus status`` shows it caught up (it restores the newest snapshot and
  replays the tail); ``replica_restore_s`` and ``replica_replay_s`` are those two
  steps as the replica logged them.
* ``apply_lag_p99_ms``: p99 of stored -> applied on the two replicas, read from
  their ``ragbus_index_apply_delay_seconds`` histograms (so it is a bucket bound).

Not the issue's full shape: the updates are stored by the benchmark, not produced by
an ingest job through the embedder, and searches are ``Search`` requests to the
shard, not whole queries.

    python -m bench.cluster [--updates N] [--rate PER_S]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import httpx
import nats
import numpy as np
from anyio.abc import Process
from prometheus_client.parser import text_string_to_metric_families

from ragbus.actors.retriever.store import EdgeStore, Filter
from ragbus.runtime import Client, RagbusError
from ragbus.runtime.cli import EmbeddedCluster, cluster_nodes, index_replicas
from ragbus.runtime.jetstream import ensure_stream, store_index_update, through_elections
from ragbus.subjects import (
    IndexUpdate,
    PointUpsert,
    Search,
    SearchResult,
    Subjects,
    index_stream,
)
from tests.support import free_port

S = Subjects()
DIM = 64
SEARCH_TIMEOUT_S = 3.0


async def _replica(urls: str, data: Path, name: str, metrics_port: int) -> Process:
    """A retriever replica process; its JSON log goes to ``<data>/log.jsonl``."""
    await anyio.Path(data).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "RAGBUS_NATS__URL": urls, "RAGBUS_NATS__REPLICAS": "3",
           "RAGBUS_NATS__MAX_RECONNECT_ATTEMPTS": "-1", "RAGBUS_METRICS__PORT": str(metrics_port),
           "RAGBUS_DATA_DIR": str(data), "RAGBUS_RETRIEVER__REPLICA_ID": name,
           "RAGBUS_RETRIEVER__SNAPSHOT_INTERVAL_S": "2",
           "RAGBUS_RETRIEVER__SNAPSHOT_MIN_UPDATES": "500",
           "RAGBUS_RETRIEVER__OPTIMIZE_IDLE_S": "600", "RAGBUS_LOGGING__LEVEL": "info",
           "RAGBUS_LOGGING__FORMAT": "json"}
    with (data / "log.jsonl").open("wb") as log:
        # --no-supervise: the bench kills and restarts the replica process itself
        return await anyio.open_process([sys.executable, "-m", "ragbus.runtime.cli", "actor",
                                         "retriever", "--no-supervise"], env=env, stdout=log,
                                        stderr=subprocess.STDOUT)


def _logged(data: Path, event: str) -> dict[str, Any] | None:
    """The first ``event`` in a replica's log (None: not logged)."""
    for line in (data / "log.jsonl").read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == event:
            return record
    return None


def _held(data: Path) -> int:
    with EdgeStore(data / "qdrant" / "default") as store:
        return store.count(Filter(include_deleted=True)) if store.dim is not None else 0


async def _p99_ms(ports: list[int]) -> float | None:
    """p99 of the replicas' stored -> applied histograms, merged (a bucket's upper bound)."""
    buckets: dict[float, float] = {}
    async with httpx.AsyncClient(timeout=5) as http:
        for port in ports:
            text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
            for family in text_string_to_metric_families(text):
                if family.name != "ragbus_index_apply_delay_seconds":
                    continue
                for sample in family.samples:
                    if sample.name.endswith("_bucket"):
                        le = float(sample.labels["le"])
                        buckets[le] = buckets.get(le, 0.0) + sample.value
    if not buckets:
        return None
    total = buckets[float("inf")]
    for bound in sorted(buckets):
        if buckets[bound] >= 0.99 * total:
            return None if bound == float("inf") else bound * 1000
    return None


async def run(updates: int, rate: float) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((updates, DIM)).astype("<f4")
    query = rng.standard_normal(DIM).astype("<f4").tobytes()
    outcomes: Counter[str] = Counter()
    stored_at: list[float] = []
    stop = anyio.Event()
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        root = Path(tmp)
        async with EmbeddedCluster(3) as cluster:
            urls = ",".join(cluster.urls)
            nc = await nats.connect(cluster.urls, max_reconnect_attempts=-1,
                                    reconnect_time_wait=0.2, connect_timeout=2)
            js = nc.jetstream()
            client = Client(nc, S)
            with anyio.fail_after(30):
                while True:
                    try:
                        await ensure_stream(nc, index_stream(S), replicas=3)
                        break
                    except Exception:  # a cluster just up may not place R3 yet
                        await anyio.sleep(0.5)
            ports = [free_port(), free_port()]
            procs = [await _replica(urls, root / n, n, p) for n, p in zip("ab", ports,
                                                                            strict=True)]

            async def search_forever() -> None:
                while not stop.is_set():
                    try:
                        with anyio.fail_after(2 * SEARCH_TIMEOUT_S):
                            await client.request(S.search("default"), Search(
                                shard="default", dense=query, limit=10), SearchResult,
                                timeout=SEARCH_TIMEOUT_S)
                        outcomes["answered"] += 1
                    except RagbusError as exc:
                        outcomes[exc.code.value] += 1
                    except TimeoutError:
                        outcomes["hung"] += 1
                    await anyio.sleep(0.01)

            async def store_all() -> None:
                pace = 1 / rate
                for i in range(updates):
                    due = time.monotonic() + pace
                    point = PointUpsert(id=str(uuid.UUID(int=i + 1)),
                                        vector=vectors[i].tobytes(),
                                        payload={"doc_id": f"d{i}", "text": "t",
                                                 "deleted": False})
                    await store_index_update(nc, S, IndexUpdate(model_id="bench", dim=DIM,
                                                                upserts=[point]))
                    stored_at.append(time.monotonic())
                    await anyio.sleep(max(0.0, due - time.monotonic()))

            async def until_stored(n: int) -> None:
                while len(stored_at) < n:  # noqa: ASYNC110 - the publisher's progress
                    await anyio.sleep(0.02)

            def gap(killed: float) -> float:
                before = max((t for t in stored_at if t <= killed), default=killed)
                after = min((t for t in stored_at if t > killed), default=killed)
                return after - before

            failovers: list[float] = []
            try:
                with anyio.fail_after(120):  # both replicas up (they answer searches)
                    while True:
                        found = await index_replicas(nc, S)
                        if len(found) == 2:
                            break
                        await anyio.sleep(0.2)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(search_forever)
                    tg.start_soon(store_all)
                    await until_stored(updates // 4)
                    nodes = await cluster_nodes([n.monitor_url for n in cluster.nodes])
                    name = next(n.meta_leader for n in nodes if n.meta_leader)
                    meta = next(n for n in cluster.nodes if n._server_name == name)
                    killed = time.monotonic()
                    await meta.kill()
                    await until_stored(updates // 2)
                    failovers.append(gap(killed))
                    await meta.restart()
                    while True:
                        info = await through_elections(lambda: js.stream_info(S.index_stream))
                        peers = (info.cluster.replicas or []) if info.cluster else []
                        if len(peers) == 2 and all(p.current for p in peers):
                            break
                        await anyio.sleep(0.2)
                    leader = info.cluster.leader if info.cluster else None
                    victim = next(n for n in cluster.nodes if n._server_name == leader)
                    killed = time.monotonic()
                    await victim.kill()
                    await until_stored(3 * updates // 4)
                    failovers.append(gap(killed))
                    await until_stored(updates)
                    await victim.restart()
                    end = int((await through_elections(
                        lambda: js.stream_info(S.index_stream))).state.last_seq)
                    with anyio.fail_after(120):
                        while True:
                            found = await index_replicas(nc, S)
                            if len(found) == 2 and all(r.delivered == end and not r.behind
                                                       for r in found):
                                break
                            await anyio.sleep(0.2)
                    stop.set()
                apply_p99 = await _p99_ms(ports)
                messages = int((await through_elections(
                    lambda: js.stream_info(S.index_stream))).state.messages)

                # a new replica, empty: the newest snapshot, then the tail
                started = time.monotonic()
                third = await _replica(urls, root / "c", "c", free_port())
                procs.append(third)
                async def third_caught_up() -> bool:
                    return any(r.replica == "c" and r.delivered == end and not r.behind
                               for r in await index_replicas(nc, S))

                with anyio.fail_after(120):
                    while not await third_caught_up():  # noqa: ASYNC110 - another process
                        await anyio.sleep(0.1)
                catchup_s = time.monotonic() - started
            finally:
                for proc in procs:
                    if proc.returncode is None:
                        proc.send_signal(signal.SIGTERM)
                for proc in procs:
                    with anyio.move_on_after(30):
                        await proc.wait()
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()
                await nc.close()
        held = [_held(root / n) for n in "abc"]
        restored = _logged(root / "c", "retriever.started_from_snapshot") or {}
        replayed = _logged(root / "c", "replica.caught_up") or {}
    return {
        "nodes": 3,
        "replicas": 2,
        "queries": sum(outcomes.values()),
        "answered": outcomes["answered"],
        "failed_with_code": {k: v for k, v in outcomes.items() if k not in ("answered", "hung")},
        "hung": outcomes["hung"],
        "ingest_docs": updates,
        "ingest_lost": updates - min(held[:2]),
        "ingest_dup": max(messages - updates, max(held) - updates, 0),
        "leader_failover_s": round(max(failovers), 2),
        "replica_catchup_s": round(catchup_s, 2),
        "replica_catchup_held": held[2],
        # inside the new replica: restoring the snapshot, then replaying the tail
        "replica_restore_s": restored.get("seconds"),
        "replica_snapshot_seq": restored.get("seq"),
        "replica_replay_s": replayed.get("seconds"),
        "replica_replayed_updates": (end - replayed["replayed_from"]
                                     if "replayed_from" in replayed else None),
        "apply_lag_p99_ms": apply_p99,
        "notes": "updates stored by the benchmark (one point each), not an ingest job "
                 "through the embedder; searches are Search requests to the shard; "
                 "apply_lag_p99_ms is a histogram bucket bound; replica_catchup_s "
                 "includes the replica process's start",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50.0,
                        help="updates stored per second (the kills happen while they are)")
    args = parser.parse_args()
    print(json.dumps(anyio.run(run, args.updates, args.rate)))


if __name__ == "__main__":
    main()
