"""Configured secrets never leave: not in logs, audit events, metrics, error replies or
``config show``, during a run that ingests, deletes, fails and audits."""

from __future__ import annotations

import io
import secrets
from pathlib import Path

import anyio
import msgspec
import pytest
from prometheus_client import generate_latest

from ragbus.actors.audit import AuditLogger, read_entries
from ragbus.actors.embedder import Embedder
from ragbus.actors.ingestor import Ingestor
from ragbus.actors.retriever import Retriever
from ragbus.config import (
    AuditSettings,
    BridgeSettings,
    IngestorSettings,
    LoggingSettings,
    NatsSettings,
    RetrieverSettings,
    RuntimeSettings,
    Secret,
    Settings,
    secret_values,
)
from ragbus.runtime import Metrics, RagbusError, configure_logging
from ragbus.runtime.audit import AuditPublisher
from ragbus.runtime.cli import follow_job, submit_job
from ragbus.runtime.client import Client
from ragbus.runtime.connection import NATS
from ragbus.subjects import (
    DocChanged,
    DocDelete,
    IngestRequest,
    InlineDocument,
    JobList,
    JobListed,
    Subjects,
)
from tests.support import running

S = Subjects()


def known() -> dict[str, str]:
    return {name: f"{name}-{secrets.token_hex(12)}" for name in (
        "nats_password", "bridge_key", "jwt_secret", "qdrant_key", "audit_hash_key")}


async def test_a_run_leaks_no_configured_secret(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    values = known()
    store = tmp_path / "audit"
    settings = Settings(
        nats=NatsSettings(url=nats_url, user="ragbus", password=Secret(values["nats_password"])),
        runtime=RuntimeSettings(default_timeout_s=60),
        bridge=BridgeSettings(api_keys=[Secret(values["bridge_key"])],
                              jwt_secret=Secret(values["jwt_secret"])),
        retriever=RetrieverSettings(data_dir=str(tmp_path / "qdrant"), optimize_idle_s=0.5,
                                    api_key=Secret(values["qdrant_key"])),
        ingestor=IngestorSettings(progress_interval_ms=0),
        audit=AuditSettings(store_dir=str(store), text="full",
                            hash_key=Secret(values["audit_hash_key"])),
    )
    assert sorted(secret_values(settings)) == sorted(values.values())
    log = io.StringIO()
    configure_logging(LoggingSettings(level="debug", format="json"),
                      secrets=secret_values(settings), stream=log)
    metrics = Metrics()
    replies: list[bytes] = []
    async with running(*(cls(settings, metrics=metrics) for cls in (
            Embedder, Retriever, Ingestor, AuditLogger))):
        # a document that quotes a secret, as a careless user might paste one
        request = IngestRequest(documents=[InlineDocument(
            id="leaky", text=f"Our NATS password is {values['nats_password']} and the key "
                             f"is {values['bridge_key']}.")])
        await submit_job(nc, request)
        async for _ in follow_job(nc, request.job_id, timeout_s=60):
            pass
        client = Client(nc, S)
        await client.request(S.docs("delete"), DocDelete(doc_id="leaky"), DocChanged)
        for subject, body in ((S.docs("delete"), msgspec.json.encode(DocDelete(doc_id="gone"))),
                              (S.docs("list"), b'{"limit": "many"}')):
            replies.append((await nc.request(subject, body, timeout=5)).data)
        with pytest.raises(RagbusError):
            await client.request(S.jobs("list"), JobList(limit=0), JobListed)
        # an actor that audits what a user asked, secret and all
        audit = AuditPublisher(settings, actor="tester", metrics=metrics,
                               secrets=secret_values(settings))
        await audit.put(audit.event("query.received", question=f"is {values['jwt_secret']} "
                                    "the jwt secret?", details={"header": "Bearer "
                                    + values["qdrant_key"]}))
        async with anyio.create_task_group() as tg:
            await tg.start(audit.run, nc)
            assert await audit.flush()
            tg.cancel_scope.cancel()
        await wait_for_kind(store, "query.received")
    stored = b"".join(p.read_bytes() for p in sorted(store.glob("audit-*.jsonl"))).decode()
    outputs = {
        "logs": log.getvalue(),
        "audit events": stored,
        "metrics": generate_latest(metrics.registry).decode(),
        "error replies": b"".join(replies).decode(),
    }
    assert "query.received" in stored
    assert "doc.deleted" in stored
    assert '"code":"BAD_REQUEST"' in outputs["error replies"]
    for where, text in outputs.items():
        for name, value in values.items():
            assert value not in text, f"{name} leaked into {where}"


def test_config_show_masks_every_secret(capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from ragbus.runtime.cli import main

    values = known()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "250")
    for env, name in (("RAGBUS_NATS__PASSWORD", "nats_password"),
                      ("RAGBUS_BRIDGE__API_KEYS", "bridge_key"),
                      ("RAGBUS_BRIDGE__JWT_SECRET", "jwt_secret"),
                      ("RAGBUS_RETRIEVER__API_KEY", "qdrant_key"),
                      ("RAGBUS_AUDIT__HASH_KEY", "audit_hash_key")):
        monkeypatch.setenv(env, values[name])
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    assert "audit.hash_key" in out
    for value in values.values():
        assert value not in out


async def wait_for_kind(store: Path, kind: str) -> None:
    with anyio.fail_after(20):
        while True:
            if any(e.event.kind == kind for e in read_entries(store)):
                return
            await anyio.sleep(0.05)
