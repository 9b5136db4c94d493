"""The retriever's index side: writes, and HNSW builds that never stop searches."""

from __future__ import annotations

import uuid
from pathlib import Path

import anyio
import numpy as np
import pytest

from ragbus.actors.retriever import Retriever
from ragbus.config import NatsSettings, RetrieverSettings, RuntimeSettings, Settings
from ragbus.runtime import BadRequestError, Client
from ragbus.runtime.connection import NATS
from ragbus.subjects import (
    IndexApplied,
    IndexUpdate,
    PointUpsert,
    Restore,
    Restored,
    Search,
    SearchResult,
    Snapshot,
    Snapshotted,
)
from tests.actors.retriever._points import DIM, S, points
from tests.support import running


async def test_an_index_build_runs_elsewhere_while_searches_are_answered(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    """The build holds the GIL for its whole length, so in the retriever's process it
    would freeze every search; in a child process, searches go on and are answered
    while it runs, and it starts only once enough points are unindexed."""
    settings = Settings(
        nats=NatsSettings(url=nats_url),
        runtime=RuntimeSettings(default_timeout_s=30),
        # 4 KB of 16 float32s: segments of 64 points and more get HNSW
        retriever=RetrieverSettings(data_dir=str(tmp_path / "qdrant"), optimize_idle_s=0.2,
                                    indexing_threshold_kb=4),
    )
    rng = np.random.default_rng(1)
    client = Client(nc, S)
    retriever = Retriever(settings)
    query = rng.standard_normal(DIM).astype("<f4").tobytes()
    async with running(retriever):
        async def write(start: int, n: int) -> None:
            await client.request(S.index_apply("default"), IndexUpdate(
                model_id="m", dim=DIM, upserts=points(rng, start, n)), IndexApplied, timeout=30)

        await write(0, 60)  # below the threshold: nothing to build
        await anyio.sleep(0.6)
        assert retriever.optimized
        assert retriever.optimizations == 0

        await write(60, 240)
        answered_during_build = 0
        with anyio.fail_after(120):
            while not (retriever.optimized and retriever.optimizations == 1):
                building = not retriever.optimized
                result = await client.request(S.search("default"), Search(
                    shard="default", dense=query, limit=5), SearchResult, timeout=5)
                assert len(result.dense) == 5
                if building and not retriever.optimized:
                    answered_during_build += 1
                await anyio.sleep(0.01)
        assert answered_during_build > 0
        store = retriever.stores["default"]
        assert await retriever.worker.run(store.count) == 300
    # the build's copy is gone; beside the shard only its position in the index stream
    assert sorted(p.name for p in (tmp_path / "qdrant").iterdir()) == [
        "default", "default.applied"]


async def test_a_shard_snapshot_restores_into_another_retriever_and_a_full_one_refuses(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    """The retriever alone opens its shard, so it packs and swaps in backups itself:
    a snapshot taken from one retriever, restored into another's shard, answers the same
    searches; a shard holding points refuses without ``force``; an archive that is not
    the one named by its digest is refused and changes nothing."""

    def settings(name: str) -> Settings:
        return Settings(nats=NatsSettings(url=nats_url),
                        runtime=RuntimeSettings(default_timeout_s=30),
                        retriever=RetrieverSettings(data_dir=str(tmp_path / name)))

    rng = np.random.default_rng(2)
    client = Client(nc, S)
    query = Search(shard="default", dense=rng.standard_normal(DIM).astype("<f4").tobytes(),
                   limit=5)
    async with running(Retriever(settings("first"))):
        await client.request(S.index_apply("default"), IndexUpdate(
            model_id="m", dim=DIM, upserts=points(rng, 0, 30)), IndexApplied, timeout=30)
        before = await client.request(S.search("default"), query, SearchResult, timeout=5)
        snap = await client.request(S.snapshot_shard("default"), Snapshot(name="snap-1"),
                                    Snapshotted, timeout=60)
    assert snap.details["points"] == 30
    # another system: on this bus the second would be a replica of the first's shard and
    # replay its updates from the index stream
    await nc.jetstream().delete_stream(S.index_stream)

    second = Retriever(settings("second"))
    async with running(second):
        await client.request(S.index_apply("default"), IndexUpdate(
            model_id="m", dim=DIM, upserts=points(rng, 100, 1)), IndexApplied, timeout=30)
        with pytest.raises(BadRequestError, match="holds 1 points"):
            await client.request(S.restore_shard("default"), Restore(dry_run=True),
                                 Restored, timeout=30)
        with pytest.raises(BadRequestError, match="holds 1 points"):
            await client.request(S.restore_shard("default"), Restore(
                name="snap-1", sha256=snap.sha256), Restored, timeout=60)
        with pytest.raises(BadRequestError, match="changed on the way"):
            await client.request(S.restore_shard("default"), Restore(
                name="snap-1", sha256="0" * 64, force=True), Restored, timeout=60)
        assert await second.worker.run(second.stores["default"].count) == 1
        done = await client.request(S.restore_shard("default"), Restore(
            name="snap-1", sha256=snap.sha256, force=True), Restored, timeout=60)
        after = await client.request(S.search("default"), query, SearchResult, timeout=5)
    assert done.details == {"shard": "default", "points": 30, "replaced": 1}
    assert [(h.chunk_id, h.score) for h in after.dense] == [
        (h.chunk_id, h.score) for h in before.dense]
    assert len(after.dense) == 5


async def test_a_snapshot_taken_while_writes_go_on_holds_what_it_says(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    """Writes wait from the flush to the end of the copy, so the copy holds exactly the
    points counted at that moment, whole batches only, while writes keep coming."""

    def settings(name: str) -> Settings:
        return Settings(nats=NatsSettings(url=nats_url),
                        runtime=RuntimeSettings(default_timeout_s=30),
                        retriever=RetrieverSettings(data_dir=str(tmp_path / name)))

    rng = np.random.default_rng(3)
    client = Client(nc, S)
    written = 0
    async with running(Retriever(settings("live"))), anyio.create_task_group() as tg:
        async def keep_writing() -> None:
            nonlocal written
            while True:
                await client.request(S.index_apply("default"), IndexUpdate(
                    model_id="m", dim=DIM, upserts=points(rng, written, 10)), IndexApplied,
                    timeout=30)
                written += 10

        await client.request(S.index_apply("default"), IndexUpdate(
            model_id="m", dim=DIM, upserts=points(rng, 10_000, 10)), IndexApplied, timeout=30)
        tg.start_soon(keep_writing)
        snaps = []
        for i in range(3):
            snaps.append(await client.request(S.snapshot_shard("default"), Snapshot(
                name=f"live-{i}"), Snapshotted, timeout=60))
        tg.cancel_scope.cancel()
    counted = [snap.details["points"] for snap in snaps]
    assert all(n % 10 == 0 for n in counted)
    assert counted == sorted(counted)
    assert written > 0

    restored = Retriever(settings("restored"))
    async with running(restored):
        for snap in snaps:
            done = await client.request(S.restore_shard("default"), Restore(
                name=snap.name, sha256=snap.sha256, force=True), Restored, timeout=60)
            assert done.details["points"] == snap.details["points"]
            assert await restored.worker.run(restored.stores["default"].count) \
                == snap.details["points"]


async def test_a_vector_that_is_not_whole_float32s_is_a_bad_request(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    """Found by the fuzzing (tests/actors/test_fuzz.py): it was INTERNAL."""
    settings = Settings(nats=NatsSettings(url=nats_url),
                        retriever=RetrieverSettings(data_dir=str(tmp_path / "qdrant")))
    client = Client(nc, S)
    async with running(Retriever(settings)):
        with pytest.raises(BadRequestError, match="not a whole number"):
            await client.request(S.index_apply("default"), IndexUpdate(
                model_id="m", dim=DIM, upserts=[PointUpsert(
                    id=str(uuid.UUID(int=1)), vector=b"\x00" * 5, payload={})]),
                IndexApplied, timeout=30)
        with pytest.raises(BadRequestError, match="not a whole number"):
            await client.request(S.search("default"), Search(shard="default", dense=b"\x00" * 7),
                                 SearchResult, timeout=30)
