"""The README's third-party consumer: its own durable, every event, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio

from ragbus.actors.audit import AuditLogger, read_entries
from ragbus.config import AuditSettings, NatsSettings, Settings
from ragbus.runtime.audit import AuditPublisher
from ragbus.runtime.connection import NATS
from tests.actors.audit.example_consumer import export_audit
from tests.support import running


async def test_a_third_party_reads_every_event_beside_the_audit_logger(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    settings = Settings(nats=NatsSettings(url=nats_url),
                        audit=AuditSettings(store_dir=str(tmp_path / "audit")))
    audit = AuditPublisher(settings, actor="tester")
    received: list[dict[str, Any]] = []
    async with running(AuditLogger(settings)) as (logger,), anyio.create_task_group() as tg:
        await tg.start(audit.run, nc)
        for i in range(50):
            await audit.emit("answer.done", request_id=f"{i:032x}")
        assert await audit.flush()
        with anyio.fail_after(20):
            while True:  # the audit-logger gets them all ...
                if sum(e.event.kind == "answer.done" for e in read_entries(
                        logger.store.directory)) >= 50:
                    break
                await anyio.sleep(0.05)
            # ... and so does a third party, at its own pace: it stops part way and comes
            # back later; its durable resumes where it stopped
            total = (await nc.jetstream().stream_info("RAG_AUDIT")).state.messages
            assert await export_audit(nats_url, received.append, stop_after=30) == 30
            assert await export_audit(nats_url, received.append,
                                      stop_after=total - 30) == total - 30
        tg.cancel_scope.cancel()
    assert len({e["event_id"] for e in received}) == len(received) == total
    # (actors may also record their own start)
    assert sum(e["kind"] == "answer.done" for e in received) == 50
