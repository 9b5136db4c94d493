"""Real actors on a least-privilege bus: each logs in as its role and still does its job."""

from __future__ import annotations

from pathlib import Path

import anyio
import msgspec

from ragbus.actors.audit import AuditLogger, read_entries, verify_store
from ragbus.actors.embedder import Embedder
from ragbus.actors.ingestor import Ingestor
from ragbus.actors.retriever import Retriever
from ragbus.config import Settings
from ragbus.runtime import Client
from ragbus.runtime.cli import EmbeddedNats, follow_job, submit_job
from ragbus.runtime.security import connect_as, write_server_include
from ragbus.subjects import DocChanged, DocDelete, IngestRequest, InlineDocument, JobState, Subjects
from tests.security._roles import SECURITY
from tests.support import running

S = Subjects()


async def test_the_ingestion_path_works_with_every_actor_in_its_role(tmp_path: Path) -> None:
    include = write_server_include(tmp_path / "auth" / "users.conf", Settings(), SECURITY)
    async with EmbeddedNats(include=include) as server:
        settings = msgspec.convert({
            "nats": {"url": server.url},
            "retriever": {"data_dir": str(tmp_path / "qdrant"), "optimize_idle_s": 0.5},
            "ingestor": {"progress_interval_ms": 0},
            "audit": {"store_dir": str(tmp_path / "audit")},
        }, Settings)
        settings = msgspec.structs.replace(settings, security=SECURITY)
        admin = await connect_as(settings.nats, SECURITY, "admin")
        try:
            async with running(AuditLogger(settings), Embedder(settings), Retriever(settings),
                               Ingestor(settings)):
                request = IngestRequest(documents=[InlineDocument(id="a", text="Rivers.")])
                await submit_job(admin, request)
                seen = [p async for p in follow_job(admin, request.job_id, timeout_s=60)]
                assert seen[-1].state == JobState.SUCCEEDED
                await Client(admin, S).request(S.docs("delete"), DocDelete(doc_id="a"),
                                               DocChanged)
                with anyio.fail_after(20):
                    while True:
                        if {"doc.deleted", "ingest.job"} <= {
                                e.event.kind for e in read_entries(tmp_path / "audit")}:
                            break
                        await anyio.sleep(0.05)
        finally:
            await admin.close()
    kinds = {e.event.kind for e in read_entries(tmp_path / "audit")}
    # the actors' own starts, then the work
    assert kinds == {"config.loaded", "doc.changed", "doc.deleted", "ingest.job"}
    assert verify_store(tmp_path / "audit").ok
