"""One query, one trace: spans across the hops, parented by the trace context the
messages carry, under the trace id the logs use. The SDK's in-memory exporter reads
them back; off (the default), nothing is recorded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import msgspec
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from ragbus.actors.embedder import Embedder
from ragbus.actors.ingestor import Ingestor
from ragbus.actors.retriever import Retriever
from ragbus.actors.router import Router
from ragbus.actors.trimmer import ContextTrimmer
from ragbus.config import (
    IngestorSettings,
    ProviderSettings,
    RetrieverSettings,
    RouterSettings,
    Settings,
)
from ragbus.runtime import Client, tracing
from ragbus.runtime.cli import follow_job, submit_job
from ragbus.runtime.connection import NATS
from ragbus.subjects import (
    Cancelled,
    Done,
    Failed,
    IngestRequest,
    InlineDocument,
    Query,
    Subjects,
    Trace,
)
from tests.support import Echo, StreamPing, running
from tests.support.echo import stream_subject

S = Subjects()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.configure(exporter)
    try:
        yield exporter
    finally:
        tracing.disable()


def by_name(found: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in found}


async def test_one_query_is_one_trace_across_every_hop(
    settings: Settings, nc: NATS, tmp_path: Path, spans: InMemorySpanExporter,
) -> None:
    s = msgspec.structs.replace(
        settings, retriever=RetrieverSettings(data_dir=str(tmp_path / "q")),
        ingestor=IngestorSettings(progress_interval_ms=0),
        router=RouterSettings(providers=[ProviderSettings(name="extractive",
                                                          kind="extractive")]))
    async with running(Embedder(s), Retriever(s), Ingestor(s), ContextTrimmer(s), Router(s)):
        job = IngestRequest(documents=[InlineDocument(
            id="otters", text="Sea otters hold hands while sleeping so they do not drift.")])
        await submit_job(nc, job)
        [p async for p in follow_job(nc, job.job_id, timeout_s=60)]
        spans.clear()
        trace = Trace()
        events = [e async for e in Client(nc, S).stream(S.query, Query(
            question="Why do otters hold hands?", reply_to=nc.new_inbox(), trace=trace),
            timeout=30)]
        await anyio.sleep(0.3)  # the last spans end as their handlers return
    assert isinstance(events[-1], Done)
    found = [sp for sp in spans.get_finished_spans()
             if sp.context is not None and f"{sp.context.trace_id:032x}" == trace.trace_id]
    named = by_name(tuple(found))
    assert {"retriever query", "embedder embed", "retriever search default",
            "context-trimmer trim", "router generate", "provider extractive"} <= set(named)

    def parent(name: str) -> str:
        span = named[name]
        assert span.parent is not None, name
        return next(n for n, sp in named.items()
                    if sp.context is not None and sp.context.span_id == span.parent.span_id)

    assert named["retriever query"].parent is None  # the client's trace starts here
    assert parent("embedder embed") == "retriever query"
    assert parent("retriever search default") == "retriever query"
    assert parent("context-trimmer trim") == "retriever query"
    assert parent("router generate") == "context-trimmer trim"
    assert parent("provider extractive") == "router generate"
    query = named["retriever query"].attributes or {}
    assert (query["ragbus.hits"], query["ragbus.cache_hit"]) == (1, False)
    generated = named["router generate"].attributes or {}
    assert generated["ragbus.provider"] == "extractive"
    assert (named["provider extractive"].attributes or {})["ragbus.tokens"] > 0


async def test_failure_and_cancellation_mark_their_spans(
    settings: Settings, nc: NATS, tmp_path: Path, spans: InMemorySpanExporter,
) -> None:
    s = msgspec.structs.replace(settings, retriever=RetrieverSettings(
        data_dir=str(tmp_path / "q")))
    async with running(Embedder(s), Retriever(s), Echo(s)):
        bad = [e async for e in Client(nc, S).stream(S.query, Query(
            question="tag:only", reply_to=nc.new_inbox()), timeout=10)]
        request = StreamPing(tokens=100, sleep_s=0.05, reply_to=nc.new_inbox())
        async with Client(nc, S).open_stream(stream_subject(S), request, timeout=10) as ev:
            await ev.__anext__()
            await ev.cancel("changed my mind")
            rest = [e async for e in ev]
        await anyio.sleep(0.3)
    assert isinstance(bad[-1], Failed)
    assert isinstance(rest[-1], Cancelled)
    named = by_name(spans.get_finished_spans())
    failed = named["retriever query"]
    assert failed.status.status_code == StatusCode.ERROR
    assert (failed.attributes or {})["ragbus.code"] == "BAD_REQUEST"
    cancelled = named["echo stream"]
    assert (cancelled.attributes or {})["ragbus.code"] == "CANCELLED"
    assert [e.name for e in cancelled.events] == ["cancelled"]


async def test_off_by_default_nothing_is_recorded(settings: Settings, nc: NATS) -> None:
    assert not tracing.enabled()
    async with running(Echo(settings)):
        events = [e async for e in Client(nc, S).stream(
            stream_subject(S), StreamPing(tokens=2, reply_to=nc.new_inbox()), timeout=10)]
    assert isinstance(events[-1], Done)
