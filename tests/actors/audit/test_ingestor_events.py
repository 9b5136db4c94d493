"""What the ingestor records in the audit trail: jobs and document changes, with outcomes."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from ragbus.actors.audit import AuditLogger, read_entries, verify_store
from ragbus.actors.embedder import Embedder
from ragbus.actors.ingestor import Ingestor
from ragbus.actors.retriever import Retriever
from ragbus.config import (
    AuditSettings,
    IngestorSettings,
    NatsSettings,
    RetrieverSettings,
    RuntimeSettings,
    Settings,
)
from ragbus.runtime import Client, NotFoundError
from ragbus.runtime.cli import follow_job, submit_job
from ragbus.runtime.connection import NATS
from ragbus.subjects import (
    AuditEvent,
    AuditOutcome,
    DocChanged,
    DocDelete,
    IngestRequest,
    InlineDocument,
    JobState,
    Subjects,
)
from tests.support import running

S = Subjects()


async def stored_events(store: Path, count: int) -> list[AuditEvent]:
    with anyio.fail_after(20):
        while True:
            # (actors may also record their own start)
            events = [e.event for e in read_entries(store) if e.event.kind != "config.loaded"]
            if len(events) >= count:
                return events
            await anyio.sleep(0.05)


async def test_jobs_and_document_changes_are_audited(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    store = tmp_path / "audit"
    settings = Settings(
        nats=NatsSettings(url=nats_url),
        runtime=RuntimeSettings(default_timeout_s=60),
        retriever=RetrieverSettings(data_dir=str(tmp_path / "qdrant"), optimize_idle_s=0.5),
        ingestor=IngestorSettings(progress_interval_ms=0),
        audit=AuditSettings(store_dir=str(store)),
    )
    async with running(Embedder(settings), Retriever(settings), Ingestor(settings),
                       AuditLogger(settings)):
        request = IngestRequest(documents=[
            InlineDocument(id="a", text="Rivers flow to the sea."),
            InlineDocument(id="b", text="Mountains are tall."),
        ], tags=["geo"])
        await submit_job(nc, request)
        progress = [p async for p in follow_job(nc, request.job_id, timeout_s=60)]
        assert progress[-1].state == JobState.SUCCEEDED
        client = Client(nc, S)
        await client.request(S.docs("delete"), DocDelete(doc_id="a"), DocChanged)
        await client.request(S.docs("delete"), DocDelete(doc_id="b", purge=True), DocChanged)
        with pytest.raises(NotFoundError):
            await client.request(S.docs("delete"), DocDelete(doc_id="nope"), DocChanged)
        events = await stored_events(store, 5)

    by_kind = {e.kind: e for e in events}
    assert sorted(by_kind) == ["doc.changed", "doc.deleted", "doc.purged", "ingest.job"]
    job = by_kind["ingest.job"]
    assert (job.actor, job.subject, job.request_id, job.outcome) == (
        "ingestor", request.job_id, request.request_id, AuditOutcome.OK)
    assert job.sizes["docs"] == 2
    assert job.sizes["docs_changed"] == 2
    assert job.sizes["chunks"] >= 2
    assert job.duration_ms is not None
    assert job.duration_ms > 0
    assert by_kind["doc.changed"].sizes == {"docs": 2}
    deletes = [e for e in events if e.kind == "doc.deleted"]
    assert [(e.subject, e.outcome, e.code) for e in deletes] == [
        ("a", AuditOutcome.OK, None), ("nope", AuditOutcome.FAILED, "NOT_FOUND")]
    assert by_kind["doc.purged"].subject == "b"
    assert by_kind["doc.purged"].sizes == {"chunks": 1}
    assert verify_store(store).ok
