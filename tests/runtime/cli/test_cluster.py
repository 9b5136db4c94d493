"""A 3-node cluster of embedded nats-server nodes: replicated streams keep their messages
and their promises when a node dies (kill -9), and clients find a survivor."""

from __future__ import annotations

import time

import anyio
import nats
from nats.js.api import KeyValueConfig, ObjectStoreConfig, StreamConfig

from ragbus.runtime import ensure_kv, ensure_stream
from ragbus.runtime.cli import EmbeddedCluster
from ragbus.runtime.ingest import upload
from ragbus.runtime.jetstream import ensure_object_store, publish_once, through_elections


async def connect_all(cluster: EmbeddedCluster) -> nats.NATS:
    return await nats.connect(cluster.urls, max_reconnect_attempts=-1, reconnect_time_wait=0.2,
                              connect_timeout=2)


async def test_resources_get_the_replicas_asked_for_and_an_r1_one_is_raised(
    nats_cluster: EmbeddedCluster,
) -> None:
    nc = await connect_all(nats_cluster)
    js = nc.jetstream()
    try:
        await ensure_stream(nc, StreamConfig(name="ONE", subjects=["one.>"]))
        assert (await js.stream_info("ONE")).config.num_replicas == 1
        await ensure_stream(nc, StreamConfig(name="ONE", subjects=["one.>"]), replicas=3)
        info = await js.stream_info("ONE")
        assert info.config.num_replicas == 3
        # a process started with the default must not shrink what the cluster raised
        await ensure_stream(nc, StreamConfig(name="ONE", subjects=["one.>"]))
        assert (await js.stream_info("ONE")).config.num_replicas == 3
        await ensure_kv(nc, KeyValueConfig(bucket="things"))
        await ensure_kv(nc, KeyValueConfig(bucket="things"), replicas=3)
        assert (await js.stream_info("KV_things")).config.num_replicas == 3
        fresh = await ensure_kv(nc, KeyValueConfig(bucket="fresh"), replicas=3)
        await fresh.put("k", b"v")
        assert (await js.stream_info("KV_fresh")).config.num_replicas == 3
        # object stores (the uploads) too
        await ensure_object_store(nc, ObjectStoreConfig(bucket="files"))
        assert (await js.stream_info("OBJ_files")).config.num_replicas == 1
        files = await ensure_object_store(nc, ObjectStoreConfig(bucket="files"), replicas=3)
        assert (await js.stream_info("OBJ_files")).config.num_replicas == 3
        put = await upload(files, "f.txt", b"data")  # through the scaling's election
        assert put.sent
        assert (await through_elections(lambda: files.get(put.file.object))).data == b"data"
        await ensure_object_store(nc, ObjectStoreConfig(bucket="files"))
        assert (await js.stream_info("OBJ_files")).config.num_replicas == 3
    finally:
        await nc.close()


async def test_killing_the_stream_leader_loses_nothing_and_stores_nothing_twice(
    nats_cluster: EmbeddedCluster,
) -> None:
    """kill -9 of the leader while publishing: the publisher retries with the same
    Nats-Msg-Id through the election, and the stream ends with each message once."""
    nc = await connect_all(nats_cluster)
    js = nc.jetstream()
    try:
        await ensure_stream(nc, StreamConfig(name="JOBS", subjects=["jobs.>"],
                                             duplicate_window=120), replicas=3)
        leader = (await js.stream_info("JOBS")).cluster.leader  # type: ignore[union-attr]
        victim = next(n for n in nats_cluster.nodes if n._server_name == leader)
        sent: list[str] = []
        election_s = 0.0

        async def publish_all() -> None:
            for i in range(400):
                await publish_once(nc, "jobs.x", f"job {i}".encode(), msg_id=f"job-{i}")
                sent.append(f"job {i}")

        async with anyio.create_task_group() as tg:
            tg.start_soon(publish_all)
            while len(sent) < 100:  # noqa: ASYNC110 - the publisher's progress
                await anyio.sleep(0.01)
            started = time.monotonic()
            await victim.kill()
            while len(sent) < 400:  # noqa: ASYNC110
                await anyio.sleep(0.05)
            election_s = time.monotonic() - started
        # and the same ids again: all dropped as repeats
        for i in range(0, 400, 50):
            await publish_once(nc, "jobs.x", f"job {i}".encode(), msg_id=f"job-{i}")
        info = await js.stream_info("JOBS")
        assert info.state.messages == 400
        assert info.cluster is not None
        assert info.cluster.leader != leader
        assert election_s < 30
    finally:
        await nc.close()


async def test_a_bucket_from_ensure_kv_reads_and_writes_through_its_leaders_death(
    nats_cluster: EmbeddedCluster,
) -> None:
    """The retriever's shard-model key, the ingestor's manifests, the breaker's state: a
    write right after kill -9 of the bucket's leader waits out the election instead of
    failing the request that made it."""
    nc = await connect_all(nats_cluster)
    js = nc.jetstream()
    try:
        kv = await ensure_kv(nc, KeyValueConfig(bucket="corpus"), replicas=3)
        await kv.put("docs.model", b"minilm")
        leader = (await js.stream_info("KV_corpus")).cluster.leader  # type: ignore[union-attr]
        victim = next(n for n in nats_cluster.nodes if n._server_name == leader)
        await victim.kill()
        await kv.put("docs.model", b"minilm-2")
        assert (await kv.get("docs.model")).value == b"minilm-2"
        assert await kv.create("other.model", b"e5") > 0
        info = await js.stream_info("KV_corpus")
        assert info.cluster is not None
        assert info.cluster.leader != leader
    finally:
        await nc.close()


async def test_a_killed_node_comes_back_and_catches_up(nats_cluster: EmbeddedCluster) -> None:
    nc = await connect_all(nats_cluster)
    js = nc.jetstream()
    try:
        await ensure_stream(nc, StreamConfig(name="LOG", subjects=["log.>"]), replicas=3)
        node = nats_cluster.nodes[2]
        await node.kill()
        for i in range(200):
            await publish_once(nc, "log.x", b"x", msg_id=f"m{i}")
        await node.restart()
        with anyio.fail_after(30):
            while True:
                info = await js.stream_info("LOG")
                peers = info.cluster.replicas if info.cluster else []
                if info.state.messages == 200 and peers and all(
                        p.current for p in peers):
                    break
                await anyio.sleep(0.2)
    finally:
        await nc.close()
