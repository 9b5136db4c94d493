"""What the ingestor counts for the dashboard: jobs, chunks, and the queue's backlog."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from ragbus.actors.embedder import Embedder
from ragbus.actors.ingestor import Ingestor
from ragbus.actors.ingestor import _actor as ingestor_actor
from ragbus.actors.retriever import Retriever
from ragbus.runtime import Metrics
from ragbus.runtime.cli import follow_job, submit_job
from ragbus.runtime.connection import NATS
from ragbus.subjects import IngestRequest, InlineDocument, JobState
from tests.actors.ingestor.test_ingestor import make_settings, paragraphs
from tests.support import running


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"actor": "ingestor", **labels})


async def test_jobs_chunks_and_the_backlog_an_ingestor_had_not_taken_are_counted(
    nats_url: str, nc: NATS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # read every 5 s in production: jobs here can all end between two reads
    monkeypatch.setattr(ingestor_actor, "BACKLOG_INTERVAL_S", 0.02)
    metrics = Metrics()
    settings = make_settings(nats_url, tmp_path)  # one job at a time
    doc = InlineDocument(id="rivers", text="\n\n".join(paragraphs(3)))
    jobs = [IngestRequest(documents=[doc]) for _ in range(3)]
    for job in jobs:  # queued before any ingestor runs: a backlog of three
        await submit_job(nc, job)
    async with running(Embedder(settings, metrics=metrics), Retriever(settings),
                       Ingestor(settings, metrics=metrics)):
        ends = []
        seen: list[float] = []

        async def watch_the_gauge() -> None:
            while True:
                seen.append(sample(metrics, "ragbus_ingest_jobs_waiting") or 0.0)
                await anyio.sleep(0.05)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_the_gauge)
            for job in jobs:
                async for progress in follow_job(nc, job.job_id, timeout_s=120):
                    last = progress
                ends.append(last)
            await anyio.sleep(0.2)  # a read after the last job was taken
            tg.cancel_scope.cancel()
    assert [e.state for e in ends] == [JobState.SUCCEEDED] * 3
    # the backlog it showed: some of the queued jobs, never more, and none at the end
    assert max(seen) in (1.0, 2.0, 3.0)
    assert all(v <= 3.0 for v in seen)
    assert seen[-1] == 0.0
    assert sample(metrics, "ragbus_ingest_jobs_total", outcome="succeeded") == 3
    chunks = ends[0].chunks_total
    assert chunks > 0
    # the first job embeds every chunk; the two repeats reuse them all
    assert sample(metrics, "ragbus_ingest_chunks_total", embedding="computed") == chunks
    assert sample(metrics, "ragbus_ingest_chunks_total", embedding="reused") == 2 * chunks
    assert sample(metrics, "ragbus_ingest_queue_seconds_count") == 3
    # the third job waited for the two before it
    assert (sample(metrics, "ragbus_ingest_queue_seconds_sum") or 0) > 0
