"""Replicas of a shard: each applies the index stream to its own copy, in order.

Two retriever processes serve one shard: a search reaches either, kill -9 of one
loses nothing, the restarted one replays only what it missed and answers as the other
did. A new replica starts from the newest snapshot and replays the tail; a position
rewound (a crash before it was written) replays updates again and converges.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import msgspec
import nats
import numpy as np
import pytest
from anyio.abc import Process
from nats.js.errors import BadRequestError
from rich.console import Console

from ragbus.actors.retriever import Retriever
from ragbus.config import NatsSettings, RetrieverSettings, RuntimeSettings, Settings
from ragbus.runtime import Client, DeadlineExceededError, RagbusError, wait_for_instances
from ragbus.runtime.cli import (
    EmbeddedCluster,
    EmbeddedNats,
    cluster_nodes,
    index_replicas,
    replica_table,
)
from ragbus.runtime.connection import NATS
from ragbus.runtime.jetstream import ensure_stream, store_index_update, through_elections
from ragbus.subjects import (
    IndexApplied,
    IndexUpdate,
    PayloadPatch,
    Search,
    SearchResult,
    index_stream,
)
from tests.actors.retriever._points import DIM, S, points
from tests.support import running
from tests.support.cli import RAGBUS
from tests.support.stores import held


async def last_seq(nc: NATS) -> int:
    return int((await nc.jetstream().stream_info(S.index_stream)).state.last_seq)


async def caught_up(nc: NATS, replica: str, seq: int) -> None:
    """Wait until ``ragbus status`` shows ``replica`` has everything up to ``seq``."""
    async def there() -> bool:
        return any(r.replica == replica and r.delivered == seq and r.behind == 0
                   for r in await index_replicas(nc, S))

    with anyio.fail_after(60):
        while not await there():  # noqa: ASYNC110 - another process
            await anyio.sleep(0.1)


@asynccontextmanager
async def replica(nats_url: str, data: Path, name: str) -> AsyncIterator[Process]:
    """``ragbus actor retriever`` in its own process, data dir and replica id."""
    env = {**os.environ, "RAGBUS_NATS__URL": nats_url, "RAGBUS_METRICS__ENABLED": "false",
           "RAGBUS_DATA_DIR": str(data), "RAGBUS_RETRIEVER__REPLICA_ID": name,
           "RAGBUS_RETRIEVER__SNAPSHOT_INTERVAL_S": "0"}
    proc = await anyio.open_process([*RAGBUS, "actor", "retriever", "--no-supervise"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            with anyio.move_on_after(30):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_a_replica_killed_under_searches_loses_nothing_and_catches_up_when_restarted(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    rng = np.random.default_rng(7)
    client = Client(nc, S)
    query = rng.standard_normal(DIM).astype("<f4").tobytes()
    outcomes: list[str] = []  # "ok" or the error code, per search, in order
    stop = anyio.Event()

    async def search_forever(min_version: int) -> None:
        while not stop.is_set():
            try:
                await client.request(S.search("default"), Search(
                    shard="default", dense=query, limit=10, min_version=min_version),
                    SearchResult, timeout=3)
                outcomes.append("ok")
            except RagbusError as exc:
                outcomes.append(exc.code.value)
            await anyio.sleep(0.01)

    async with replica(nats_url, tmp_path / "a", "a") as a, \
            replica(nats_url, tmp_path / "b", "b") as b:
        with anyio.fail_after(60):
            await wait_for_instances(nc, "retriever", 2)
        await client.request(S.index_apply("default"), IndexUpdate(
            model_id="m", dim=DIM, upserts=points(rng, 0, 200)), IndexApplied, timeout=30)
        first = await last_seq(nc)
        async with anyio.create_task_group() as tg:
            tg.start_soon(search_forever, first)
            with anyio.fail_after(30):
                while outcomes.count("ok") < 20:  # noqa: ASYNC110 - the searcher's progress
                    await anyio.sleep(0.05)
            a.kill()  # SIGKILL: no drain, no goodbye
            await a.wait()
            killed_at = len(outcomes)
            # written while a is dead: b applies them, a must replay them
            await client.request(S.index_apply("default"), IndexUpdate(
                model_id="m", dim=DIM, upserts=points(rng, 200, 100),
                deletes=[str(uuid.UUID(int=i + 1)) for i in range(5)],
                patches=[PayloadPatch(ids=[str(uuid.UUID(int=i + 1)) for i in range(10, 20)],
                                      payload={"tags": ["patched"]})]),
                IndexApplied, timeout=30)
            with anyio.fail_after(30):
                while outcomes[killed_at:].count("ok") < 50:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            stop.set()
        after_kill = outcomes[killed_at:]
        # a search in flight to the dead replica may miss its deadline; nothing else fails
        assert set(after_kill) <= {"ok", "DEADLINE_EXCEEDED"}
        assert after_kill.count("DEADLINE_EXCEEDED") <= 2
        assert after_kill[-40:] == ["ok"] * 40
        final = await last_seq(nc)
        expected = await client.request(S.search("default"), Search(
            shard="default", dense=query, limit=10, min_version=final), SearchResult,
            timeout=10)  # only b is up: b's answer

        async with replica(nats_url, tmp_path / "a", "a"):
            await caught_up(nc, "a", final)
            b.kill()
            await b.wait()
            with anyio.fail_after(30):
                await wait_for_instances(nc, "retriever", 1)
            again = await client.request(S.search("default"), Search(
                shard="default", dense=query, limit=10, min_version=final), SearchResult,
                timeout=10)  # only the restarted a is up
        assert [(h.chunk_id, h.payload) for h in again.dense] == [
            (h.chunk_id, h.payload) for h in expected.dense]
        assert [h.score for h in again.dense] == pytest.approx([h.score for h in expected.dense])
        assert again.applied == expected.applied == final

    copy_a, copy_b = held(tmp_path / "a" / "qdrant"), held(tmp_path / "b" / "qdrant")
    assert len(copy_a) == 295  # 300 written once each, 5 deleted: no duplicate, none lost
    assert copy_a == copy_b
    assert all(copy_a[str(uuid.UUID(int=i + 1))]["tags"] == ["patched"] for i in range(10, 20))


def settings(nats_url: str, data: Path, name: str, **retriever: object) -> Settings:
    return Settings(nats=NatsSettings(url=nats_url),
                    runtime=RuntimeSettings(default_timeout_s=30),
                    retriever=RetrieverSettings(data_dir=str(data / name), replica_id=name,
                                                optimize_idle_s=600, **retriever))  # type: ignore[arg-type]


async def test_a_new_replica_starts_from_the_snapshot_and_replays_only_the_tail(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    """1,000 updates, then a replica with an empty data dir: it restores the newest
    snapshot and applies only the updates after it. Its position rewound (a crash before
    the position was written), it applies those again and still holds each point once."""
    rng = np.random.default_rng(3)
    js = nc.jetstream()
    first = Retriever(settings(nats_url, tmp_path, "first", snapshot_interval_s=0.2,
                               snapshot_min_updates=500))
    async with running(first):
        for i in range(1000):
            await store_index_update(nc, S, IndexUpdate(
                model_id="m", dim=DIM, upserts=points(rng, i, 1)))
        shards = await js.object_store(S.bucket("shards"))
        with anyio.fail_after(60):
            while True:
                try:
                    snapshot = json.loads((await shards.get_info("default")).description or "")
                    break
                except Exception:  # none yet
                    await anyio.sleep(0.1)
        # the tail: after the snapshot, and under snapshot_min_updates (no newer snapshot)
        for i in range(1000, 1050):
            await store_index_update(nc, S, IndexUpdate(
                model_id="m", dim=DIM, upserts=points(rng, i, 1)))
        end = await last_seq(nc)
        with anyio.fail_after(60):
            while first.logs["default"].applied < end:  # noqa: ASYNC110 - its apply
                await anyio.sleep(0.05)

        second = Retriever(settings(nats_url, tmp_path, "second", snapshot_interval_s=0))
        async with running(second):  # started: restored and caught up before serving
            log = second.logs["default"]
            start = log.caught_up_from  # the restored snapshot's sequence
            assert start >= snapshot["seq"]
            assert log.applied == end
            assert log.applied_updates == end - start < 1000
            assert await second.worker.run(second.stores["default"].count) == 1050

        # a crash between applying and writing the position: 300 updates apply again
        position = tmp_path / "second" / "default.applied"
        kept = msgspec.json.decode(position.read_bytes())
        position.write_bytes(msgspec.json.encode({**kept, "seq": start - 300}))
        # and a job retried after a crash: the same points stored a second time
        await store_index_update(nc, S, IndexUpdate(model_id="m", dim=DIM,
                                                    upserts=points(np.random.default_rng(3),
                                                                   0, 1)))
        end = await last_seq(nc)
        again = Retriever(settings(nats_url, tmp_path, "second", snapshot_interval_s=0))
        async with running(again):
            assert again.logs["default"].applied_updates == end - (start - 300)
        with anyio.fail_after(60):
            while first.logs["default"].applied < end:  # noqa: ASYNC110 - its apply
                await anyio.sleep(0.05)
    assert held(tmp_path / "second") == held(tmp_path / "first")
    assert len(held(tmp_path / "first")) == 1050


async def test_a_search_waits_for_its_replica_to_apply_min_version(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    """Read-your-writes: a replica behind ``min_version`` answers once it has applied it,
    and a search whose deadline passes first gets DEADLINE_EXCEEDED, not stale hits."""
    rng = np.random.default_rng(5)
    client = Client(nc, S)
    retriever = Retriever(settings(nats_url, tmp_path, "only", snapshot_interval_s=0))
    async with running(retriever):
        log = retriever.logs["default"]
        new = points(rng, 0, 1)
        async with log.lock:  # its apply is stuck behind this
            seq = await store_index_update(nc, S, IndexUpdate(model_id="m", dim=DIM,
                                                              upserts=new))
            with pytest.raises(DeadlineExceededError):
                await client.request(S.search("default"), Search(
                    shard="default", dense=new[0].vector, limit=1, min_version=seq),
                    SearchResult, timeout=1)
            answered: list[SearchResult] = []

            async def search() -> None:
                answered.append(await client.request(S.search("default"), Search(
                    shard="default", dense=new[0].vector, limit=1, min_version=seq),
                    SearchResult, timeout=30))

            async with anyio.create_task_group() as tg:
                tg.start_soon(search)
                await anyio.sleep(0.5)
                assert not answered  # still waiting: nothing applied yet
                log.lock.release()
                try:
                    with anyio.fail_after(30):
                        while not answered:  # noqa: ASYNC110 - the search task
                            await anyio.sleep(0.05)
                finally:
                    await log.lock.acquire()
        assert [h.chunk_id for h in answered[0].dense] == [new[0].id]
        assert answered[0].applied is not None
        assert answered[0].applied >= seq


async def test_updates_stored_while_the_meta_and_a_stream_leader_die_reach_every_replica_once(
    nats_cluster: EmbeddedCluster, tmp_path: Path
) -> None:
    """A 3-node cluster, two replicas, searches and stored updates running: kill -9 of the
    JetStream meta leader, then (the node back) of the index stream's leader. Every
    update is stored once and applied once on both replicas; no search hangs."""
    urls = ",".join(nats_cluster.urls)
    nc = await nats.connect(nats_cluster.urls, max_reconnect_attempts=-1,
                            reconnect_time_wait=0.2, connect_timeout=2)
    js = nc.jetstream()

    def on_cluster(name: str) -> Settings:
        return Settings(nats=NatsSettings(url=urls, replicas=3, max_reconnect_attempts=-1,
                                          reconnect_time_wait_s=0.2),
                        runtime=RuntimeSettings(default_timeout_s=30),
                        retriever=RetrieverSettings(data_dir=str(tmp_path / name),
                                                    replica_id=name, snapshot_interval_s=0,
                                                    optimize_idle_s=600))

    rng = np.random.default_rng(11)
    client = Client(nc, S)
    query = rng.standard_normal(DIM).astype("<f4").tobytes()
    total, stored = 600, 0
    outcomes: list[str] = []
    stop = anyio.Event()

    async def store_all() -> None:
        nonlocal stored
        for i in range(total):
            await store_index_update(nc, S, IndexUpdate(model_id="m", dim=DIM,
                                                        upserts=points(rng, i, 1)))
            stored += 1

    async def search_forever() -> None:
        while not stop.is_set():
            try:
                with anyio.fail_after(10):  # a hung search fails the test here
                    await client.request(S.search("default"), Search(
                        shard="default", dense=query, limit=5), SearchResult, timeout=3)
                outcomes.append("ok")
            except RagbusError as exc:
                outcomes.append(exc.code.value)
            await anyio.sleep(0.02)

    async def until_stored(n: int) -> None:
        with anyio.fail_after(90):
            while stored < n:  # noqa: ASYNC110 - the publisher's progress
                await anyio.sleep(0.05)

    def node_named(name: str | None) -> EmbeddedNats:
        return next(n for n in nats_cluster.nodes if n._server_name == name)

    with anyio.fail_after(30):  # a cluster just up may not place R3 streams for a moment
        while True:
            try:
                await ensure_stream(nc, index_stream(S), replicas=3)
                break
            except BadRequestError:
                await anyio.sleep(0.5)
    a, b = Retriever(on_cluster("a")), Retriever(on_cluster("b"))
    try:
        async with running(a, b), anyio.create_task_group() as tg:
            tg.start_soon(search_forever)
            tg.start_soon(store_all)
            await until_stored(100)
            nodes = await cluster_nodes([n.monitor_url for n in nats_cluster.nodes])
            meta = node_named(next(n.meta_leader for n in nodes if n.meta_leader))
            await meta.kill()
            await until_stored(250)
            await meta.restart()
            with anyio.fail_after(60):  # the stream has all three copies current again
                while True:
                    info = await through_elections(lambda: js.stream_info(S.index_stream))
                    peers = info.cluster.replicas if info.cluster else []
                    if len(peers) == 2 and all(p.current for p in peers):
                        break
                    await anyio.sleep(0.2)
            leader = info.cluster.leader if info.cluster else None
            await node_named(leader).kill()
            await until_stored(total)
            end = int((await through_elections(
                lambda: js.stream_info(S.index_stream))).state.last_seq)
            with anyio.fail_after(60):
                while min(a.logs["default"].applied, b.logs["default"].applied) < end:  # noqa: ASYNC110
                    await anyio.sleep(0.1)
            stop.set()
        info = await through_elections(lambda: js.stream_info(S.index_stream))
        assert info.state.messages == total  # each update stored once
    finally:
        await nc.close()
    assert set(outcomes) <= {"ok", "DEADLINE_EXCEEDED", "UNAVAILABLE"}
    assert outcomes.count("ok") > 0
    copy_a = held(tmp_path / "a")
    assert len(copy_a) == total  # none lost; ids are the points': none twice
    assert copy_a == held(tmp_path / "b")


async def test_ragbus_status_shows_a_stopped_replica_falling_behind(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    """A replica that is down keeps its consumer: ``ragbus status`` says how many updates
    it has not applied and how long the oldest has waited; one up shows none."""
    rng = np.random.default_rng(9)
    async with running(Retriever(settings(nats_url, tmp_path, "up", snapshot_interval_s=0))):
        down = Retriever(settings(nats_url, tmp_path, "down", snapshot_interval_s=0))
        async with running(down):
            for i in range(2):
                seq = await store_index_update(nc, S, IndexUpdate(
                    model_id="m", dim=DIM, upserts=points(rng, i, 1)))
            with anyio.fail_after(30):
                while down.logs["default"].applied < seq:  # noqa: ASYNC110 - its apply
                    await anyio.sleep(0.05)
            consumer = down.logs["default"].consumer
        with anyio.fail_after(30):  # its last pull request has expired at the server
            while (await nc.jetstream().consumer_info(S.index_stream, consumer)).num_waiting:  # noqa: ASYNC110
                await anyio.sleep(0.1)
        for i in range(2, 5):
            last = await store_index_update(nc, S, IndexUpdate(
                model_id="m", dim=DIM, upserts=points(rng, i, 1)))
        await caught_up(nc, "up", last)
        found = {r.replica: r for r in await index_replicas(nc, S)}
    assert found["down"].delivered == seq
    assert found["down"].behind == 3
    assert found["down"].behind_s > 0
    assert (found["up"].delivered, found["up"].behind, found["up"].behind_s) == (last, 0, 0.0)
    rendered = Console(width=200, record=True)
    rendered.print(replica_table(list(found.values())))
    assert "down" in rendered.export_text()
