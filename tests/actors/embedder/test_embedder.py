"""The embedder actor: real model, real NATS, real JetStream KV cache."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from structlog.testing import capture_logs

from ragbus.actors.embedder import Embedder, EmbeddingModel
from ragbus.config import EmbedderSettings, NatsSettings, RuntimeSettings, Settings
from ragbus.runtime import BadRequestError, Client, TooLargeError, discover
from ragbus.runtime.connection import NATS
from ragbus.subjects import Embed, Embedded, Subjects
from tests.support import running

EMBED = Subjects().embed


def make_settings(nats_url: str, **embedder: object) -> Settings:
    return Settings(
        nats=NatsSettings(url=nats_url),
        runtime=RuntimeSettings(default_timeout_s=60),
        embedder=EmbedderSettings(**embedder),
    )  # type: ignore[arg-type]


def vectors(reply: Embedded) -> np.ndarray:
    return np.frombuffer(reply.vectors, dtype="<f4").reshape(-1, reply.dim)


async def test_embed_returns_the_models_vectors_with_model_id_and_dim(
    nats_url: str, nc: NATS
) -> None:
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "The sky is blue."]
    async with running(Embedder(make_settings(nats_url))) as (embedder,):
        reply = await Client(nc).request(EMBED, Embed(texts=texts), Embedded)
        assert embedder.model is not None
        direct = embedder.model.embed(texts)
    got = vectors(reply)
    assert reply.model_id == "all-MiniLM-L6-v2-int8"
    assert reply.dim == 384
    assert got.shape == (3, 384)
    np.testing.assert_allclose(got, direct, atol=1e-5)
    assert got[0] @ got[1] > got[0] @ got[2]  # meaning survives the trip


async def test_concurrent_small_requests_share_model_calls(nats_url: str, nc: NATS) -> None:
    settings = make_settings(nats_url, max_wait_ms=50.0, cache=False)
    client = Client(nc)
    replies: list[Embedded] = []
    async with running(Embedder(settings)) as (embedder,):
        assert embedder.batcher is not None

        async def ask(i: int) -> None:
            replies.append(await client.request(EMBED, Embed(texts=[f"question {i}"]), Embedded))

        async with anyio.create_task_group() as tg:
            for i in range(24):
                tg.start_soon(ask, i)
        calls = embedder.batcher.model_calls
    assert len(replies) == 24
    assert embedder.batcher.texts_embedded == 24
    assert calls < 24 / 3, f"{calls} model calls for 24 concurrent requests: not coalesced"


async def test_large_request_is_split_into_batches_of_the_configured_size(
    nats_url: str, nc: NATS
) -> None:
    settings = make_settings(nats_url, batch_size=16, cache=False)
    texts = [f"sentence number {i} about topic {i % 7}" for i in range(40)]
    async with running(Embedder(settings)) as (embedder,):
        reply = await Client(nc).request(EMBED, Embed(texts=texts), Embedded)
        assert embedder.batcher is not None
        assert embedder.batcher.model_calls == 3  # 16 + 16 + 8
        assert embedder.model is not None
        np.testing.assert_allclose(vectors(reply), embedder.model.embed(texts), atol=1e-5)


async def test_with_the_cache_off_every_text_is_embedded(nats_url: str, nc: NATS) -> None:
    settings = make_settings(nats_url, cache=False)
    client = Client(nc)
    async with running(Embedder(settings)) as (embedder,):
        for _ in range(3):
            reply = await client.request(EMBED, Embed(texts=["the same text"]), Embedded)
            assert reply.cache_hits == 0
        assert embedder.batcher is not None
        assert embedder.batcher.texts_embedded == 3


async def test_cache_serves_repeated_text_across_replicas(nats_url: str, nc: NATS) -> None:
    settings = make_settings(nats_url)
    client = Client(nc)
    async with running(Embedder(settings)) as (first,):
        one = await client.request(EMBED, Embed(texts=["cached text", "other"]), Embedded)
        again = await client.request(EMBED, Embed(texts=["cached text"]), Embedded)
        assert first.batcher is not None
        assert first.batcher.texts_embedded == 2
    assert one.cache_hits == 0
    assert again.cache_hits == 1
    # a new replica has an empty local cache: the hit comes from the shared KV bucket
    async with running(Embedder(settings)) as (second,):
        third = await client.request(EMBED, Embed(texts=["other", "cached text", "new"]), Embedded)
        assert second.batcher is not None
        assert second.batcher.texts_embedded == 1
    assert third.cache_hits == 2
    np.testing.assert_array_equal(vectors(third)[1], vectors(one)[0])


async def test_duplicate_texts_in_one_request_are_embedded_once(nats_url: str, nc: NATS) -> None:
    async with running(Embedder(make_settings(nats_url, cache=False))) as (embedder,):
        reply = await Client(nc).request(EMBED, Embed(texts=["same", "same", "same"]), Embedded)
        assert embedder.batcher is not None
        assert embedder.batcher.texts_embedded == 1
    got = vectors(reply)
    np.testing.assert_array_equal(got[0], got[2])


async def test_wrong_model_and_too_many_texts_are_refused(nats_url: str, nc: NATS) -> None:
    client = Client(nc)
    async with running(Embedder(make_settings(nats_url, max_texts=4))):
        with pytest.raises(BadRequestError, match="not comparable"):
            await client.request(EMBED, Embed(texts=["x"], model="bge-small"), Embedded)
        with pytest.raises(TooLargeError, match=r"embedder\.max_texts"):
            await client.request(EMBED, Embed(texts=["x"] * 5), Embedded)
        ok = await client.request(EMBED, Embed(texts=[], model="all-MiniLM-L6-v2-int8"), Embedded)
    assert ok.vectors == b""


async def test_actor_keeps_answering_while_the_model_runs(nats_url: str, nc: NATS) -> None:
    long_texts = [" ".join(f"word{i}x{j}" for j in range(180)) for i in range(64)]
    order: list[str] = []
    async with running(Embedder(make_settings(nats_url, cache=False))) as (embedder,):

        async def big() -> None:
            await Client(nc).request(EMBED, Embed(texts=long_texts), Embedded, timeout=300)
            order.append("embed")

        async with anyio.create_task_group() as tg:
            tg.start_soon(big)
            with anyio.fail_after(30):
                while not len(embedder.inflight):  # noqa: ASYNC110 - polling a counter
                    await anyio.sleep(0.001)
            await anyio.sleep(0.05)  # and handed to the worker thread
            pings = await discover(nc, "PING", wait_s=0.2)
            order.append("ping")
    assert [p["name"] for p in pings] == ["embedder"]
    assert order == ["ping", "embed"]  # discovery answered while inference was running


async def test_a_query_lane_request_does_not_wait_behind_a_running_bulk_batch(
    nats_url: str, nc: NATS
) -> None:
    long_texts = [" ".join(f"word{i}x{j}" for j in range(180)) for i in range(64)]
    order: list[str] = []
    client = Client(nc)
    async with running(Embedder(make_settings(nats_url, cache=False))) as (embedder,):
        assert embedder.batcher is not None
        assert embedder.query_batcher is not None

        async def bulk() -> None:
            # bulk: the default; two batches of 32, seconds each (more on a busy machine)
            await client.request(EMBED, Embed(texts=long_texts), Embedded, timeout=300)
            order.append("bulk")

        async with anyio.create_task_group() as tg:
            tg.start_soon(bulk)
            with anyio.fail_after(30):
                while not len(embedder.inflight):  # noqa: ASYNC110 - polling a counter
                    await anyio.sleep(0.001)
            await anyio.sleep(0.05)  # the first bulk batch is on the worker thread
            reply = await client.request(
                EMBED, Embed(texts=["how do otters sleep?"], lane="query"), Embedded, timeout=60)
            order.append("query")
        assert embedder.query_batcher.texts_embedded == 1
        assert embedder.batcher.texts_embedded == 64
        assert embedder.model is not None
        np.testing.assert_allclose(vectors(reply), embedder.model.embed(["how do otters sleep?"]),
                                   atol=1e-5)  # the same vector space in both lanes
        # more texts than the query lane takes are served in bulk
        many = [f"q{i}" for i in range(embedder.config.query_lane_max_texts + 1)]
        await client.request(EMBED, Embed(texts=many, lane="query"), Embedded)
        assert embedder.query_batcher.texts_embedded == 1
    assert order == ["query", "bulk"]


async def test_without_the_query_lane_every_request_is_bulk(nats_url: str, nc: NATS) -> None:
    settings = make_settings(nats_url, cache=False, query_lane=False)
    async with running(Embedder(settings)) as (embedder,):
        await Client(nc).request(EMBED, Embed(texts=["a question"], lane="query"), Embedded)
        assert embedder.query_batcher is None
        assert embedder.batcher is not None
        assert embedder.batcher.texts_embedded == 1


def _threads_by_nice() -> dict[int, int]:
    """How many of this process's threads run at each nice value (Linux /proc)."""
    counts: dict[int, int] = {}
    for task in os.listdir("/proc/self/task"):
        # field 19 of stat is the nice value; the name (field 2) may hold spaces
        stat = Path(f"/proc/self/task/{task}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        nice = int(fields[16])
        counts[nice] = counts.get(nice, 0) + 1
    return counts


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="Linux /proc")
async def test_the_bulk_lane_and_its_onnx_threads_run_nicer_than_the_query_lane(
    nats_url: str
) -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    before = _threads_by_nice().get(base + 5, 0)
    settings = make_settings(nats_url, cache=False, threads=2, query_threads=2, bulk_nice=5)
    async with running(Embedder(settings)) as (embedder,):
        assert embedder.query_worker.nice == 0
        niced = _threads_by_nice().get(base + 5, 0) - before
    # the bulk worker thread and the pool thread its 2-thread model started; the
    # query lane's worker and its pool thread stay at the process's priority
    assert niced == 2


def _threads_at(nice: int) -> set[str]:
    """This process's threads (ids) that run at ``nice`` (Linux /proc)."""
    return {task for task in os.listdir("/proc/self/task")
            if int(Path(f"/proc/self/task/{task}/stat").read_text().rsplit(")", 1)[1].split()[16])
            == nice}


def _counting_loads(monkeypatch: pytest.MonkeyPatch) -> list[EmbeddingModel]:
    """Every model ``EmbeddingModel.load`` returns from now on, in order."""
    loaded: list[EmbeddingModel] = []
    original = EmbeddingModel.load

    def load(*args: Any, **kwargs: Any) -> EmbeddingModel:
        model = original(*args, **kwargs)
        loaded.append(model)
        return model

    monkeypatch.setattr(EmbeddingModel, "load", load)
    return loaded


def _preloaded(logs: list[dict[str, Any]]) -> list[list[str]]:
    return [e["preloaded"] for e in logs if e["event"] == "embedder.model"]


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="Linux /proc")
async def test_setup_takes_the_models_a_prewarm_loaded_and_the_bulk_lane_stays_niced(
    nats_url: str, nc: NATS, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = _counting_loads(monkeypatch)
    base = os.getpriority(os.PRIO_PROCESS, 0)
    before = _threads_at(base + 5)  # by id: an earlier test's threads may end meanwhile
    settings = make_settings(nats_url, cache=False, threads=2, query_threads=2, bulk_nice=5)
    Embedder.prewarm(settings)  # as a warm spare does, before any event loop
    assert len(loaded) == 2  # both lanes
    with capture_logs() as logs:
        async with running(Embedder(settings)) as (embedder,):
            client = Client(nc)
            await client.request(EMBED, Embed(texts=["bulk text"]), Embedded)
            await client.request(EMBED, Embed(texts=["a question?"], lane="query"), Embedded)
            niced = len(_threads_at(base + 5) - before)
            assert embedder.model is not None
            assert embedder.query_model is not None
            assert {id(embedder.model), id(embedder.query_model)} == {id(m) for m in loaded}
    assert len(loaded) == 2  # setup loaded nothing itself
    assert _preloaded(logs) == [["bulk", "query"]]
    # as when setup loads it: the bulk worker thread and the pool thread its 2-thread
    # model started (on the prewarm's niced thread, gone since) run niced, no other
    assert niced == 2


async def test_a_prewarm_under_other_settings_is_not_used_and_not_kept(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = _counting_loads(monkeypatch)
    settings = make_settings(nats_url, cache=False, threads=1, query_threads=1, bulk_nice=5)
    Embedder.prewarm(settings)
    assert len(loaded) == 2
    changed = make_settings(nats_url, cache=False, threads=1, query_threads=1, bulk_nice=6)
    with capture_logs() as logs:
        async with running(Embedder(changed)) as (embedder,):
            assert embedder.model is loaded[2]  # the bulk lane's nice changed: loaded afresh
        assert len(loaded) == 3  # the query lane's key is the same: taken
        # one replica per process: what the first setup did not take is dropped
        async with running(Embedder(settings)):
            pass
    assert len(loaded) == 5
    assert _preloaded(logs) == [["query"], []]
