"""The audit-logger on a real bus: every event once, in a chain that survives crashes."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

import anyio
import msgspec
import pytest

from ragbus.actors.audit import AuditLogger, StoreLockedError, read_entries, verify_store
from ragbus.actors.audit._files import read_head
from ragbus.config import AuditSettings, NatsSettings, RuntimeSettings, Secret, Settings
from ragbus.runtime import Metrics
from ragbus.runtime.audit import AuditPublisher, ensure_audit_stream
from ragbus.runtime.cli import main as cli
from ragbus.runtime.connection import NATS
from ragbus.subjects import MSG_ID_HEADER, AuditEvent, Subjects
from tests.support import running
from tests.support.cli import RAGBUS
from tests.support.waiting import wait_for

S = Subjects()
OLD_STORE = Path(__file__).parent / "store_before_17"


def make_settings(nats_url: str, store: Path, **audit: object) -> Settings:
    return Settings(
        nats=NatsSettings(url=nats_url, max_reconnect_attempts=2, reconnect_time_wait_s=0.1),
        runtime=RuntimeSettings(default_timeout_s=5.0, drain_grace_s=1.0),
        audit=AuditSettings(store_dir=str(store), **audit),  # type: ignore[arg-type]
    )


def stored(store: Path) -> int:
    """Records written so far (from HEAD: cheap enough to poll)."""
    head = read_head(store)
    return head.seq if head is not None else 0


def recorded(store: Path) -> list[AuditEvent]:
    """This test's events: actors may also record their own start (``config.loaded``)."""
    return [e.event for e in read_entries(store) if e.event.kind != "config.loaded"]



async def test_events_of_several_publishers_are_stored_once_in_a_valid_chain(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    settings = make_settings(nats_url, tmp_path / "audit")
    metrics = Metrics()
    publishers = [AuditPublisher(settings, actor=f"actor{i}") for i in range(3)]
    async with running(AuditLogger(settings, metrics=metrics)) as (logger,), \
            anyio.create_task_group() as tg:
        for p in publishers:
            await tg.start(p.run, nc)
        for i in range(200):
            for p in publishers:
                await p.emit("query.received", request_id=f"{i:032x}")
        await wait_for(lambda: len(recorded(logger.store.directory)) >= 600)
        tg.cancel_scope.cancel()
    report = verify_store(tmp_path / "audit")
    assert (report.ok, report.duplicates) == (True, 0)
    actors = [e.actor for e in recorded(tmp_path / "audit")]
    assert {a: actors.count(a) for a in set(actors)} == {"actor0": 200, "actor1": 200,
                                                         "actor2": 200}
    assert metrics.registry.get_sample_value(
        "ragbus_audit_records_total", {"actor": "audit-logger", "result": "written"}
    ) == report.records


async def test_a_message_that_is_not_an_event_is_recorded_and_the_logger_goes_on(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    settings = make_settings(nats_url, tmp_path / "audit")
    async with running(AuditLogger(settings)) as (logger,):
        js = nc.jetstream()
        await js.publish(S.audit("third-party", "query.received"), b"\xff not json")
        await js.publish(S.audit("third-party", "doc.deleted"), msgspec.json.encode(
            AuditEvent(kind="doc.deleted", actor="third-party")))
        await wait_for(lambda: len(recorded(logger.store.directory)) >= 2)
    kinds = [e.kind for e in recorded(tmp_path / "audit")]
    assert kinds == ["audit.rejected", "doc.deleted"]


async def test_an_event_in_another_roles_name_is_rejected_counted_and_acknowledged(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    """The bus lets each role publish only under ``<prefix>.audit.<its role>.``; an event
    that names an actor of another role there is a forgery (or a bug) and is not kept as
    if it were true: a rejection note takes its place, with its digest."""
    settings = make_settings(nats_url, tmp_path / "audit")
    metrics = Metrics()
    forged = AuditEvent(kind="doc.deleted", actor="ingestor", subject="handbook")
    honest = AuditEvent(kind="rate.limited", actor="bridge")
    relabelled = AuditEvent(kind="auth.denied", actor="bridge")  # kind is not the subject's
    unknown = AuditEvent(kind="doc.deleted", actor="someone-else")
    async with running(AuditLogger(settings, metrics=metrics)) as (logger,):
        js = nc.jetstream()
        for i, (subject, event) in enumerate((
                (S.audit("bridge", "doc.deleted"), forged),
                (S.audit("bridge", "rate.limited"), honest),
                (S.audit("bridge", "doc.deleted"), relabelled),
                (S.audit("bridge", "doc.deleted"), unknown),
                ("rag.audit.doc.deleted", forged))):  # no role: as published before #17
            await js.publish(subject, msgspec.json.encode(event),
                             headers={MSG_ID_HEADER: f"{i}-{event.event_id}"})
        await wait_for(lambda: len(recorded(logger.store.directory)) >= 5)
        info = await js.consumer_info(S.audit_stream, "audit-logger")
    kept = recorded(tmp_path / "audit")
    assert [e.kind for e in kept] == ["audit.rejected", "rate.limited", "audit.rejected",
                                      "audit.rejected", "audit.rejected"]
    assert kept[1].event_id == honest.event_id
    assert all(e.actor in ("bridge", "audit-logger") for e in kept)
    note = kept[0]
    assert note.subject == "rag.audit.bridge.doc.deleted"
    assert "'ingestor'" in note.details["error"]
    assert "only role 'bridge'" in note.details["error"]
    assert note.details["sha256"] == hashlib.sha256(msgspec.json.encode(forged)).hexdigest()
    assert "kind" in kept[2].details["error"]
    assert "'someone-else'" in kept[3].details["error"]
    assert "no role" in kept[4].details["error"]
    assert metrics.registry.get_sample_value(
        "ragbus_audit_records_total", {"actor": "audit-logger", "result": "rejected"}) == 4
    # acknowledged like any other message: never redelivered
    assert (info.num_ack_pending, info.num_pending) == (0, 0)
    assert verify_store(tmp_path / "audit").ok


async def test_a_store_written_before_roles_were_in_subjects_still_verifies_and_goes_on(
    nats_url: str, nc: NATS, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its records hold unkeyed hashes and an event forged under the old rules: the chain
    is what verify checks, and the new logger continues it."""
    store = tmp_path / "audit"
    store.mkdir()
    for name in ("HEAD", "audit-2026-12-04.jsonl"):
        shutil.copy(OLD_STORE / name, store / name)
    code, text = verify_cli(store, capsys)
    assert code == 0, text
    old = [e.event for e in read_entries(store)]
    assert old[1].question is not None
    assert old[1].question.startswith("sha256:")
    settings = make_settings(nats_url, store, hash_key=Secret("a-key-of-32-characters-0123456789"))
    audit = AuditPublisher(settings, actor="router")
    async with running(AuditLogger(settings)), anyio.create_task_group() as tg:
        await tg.start(audit.run, nc)
        await audit.emit("answer.done", question="Is it yes?", answer="Yes.")
        assert await audit.flush()
        await wait_for(lambda: any(e.kind == "answer.done" and e.question and
                                   e.question.startswith("hmac-sha256:")
                                   for e in recorded(store)))
        tg.cancel_scope.cancel()
    code, text = verify_cli(store, capsys)
    assert code == 0, text
    entries = list(read_entries(store))
    assert [e.event for e in entries[:5]] == old
    assert entries[5].seq == 6


async def test_a_consumer_reset_redelivers_everything_and_writes_nothing_new(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    store = tmp_path / "audit"
    settings = make_settings(nats_url, store)
    audit = AuditPublisher(settings, actor="tester")
    async with running(AuditLogger(settings)) as (logger,), anyio.create_task_group() as tg:
        await tg.start(audit.run, nc)
        for i in range(300):
            await audit.emit("answer.done", request_id=f"{i:032x}")
        await wait_for(lambda: len(recorded(logger.store.directory)) >= 300)
        tg.cancel_scope.cancel()
    before = stored(store)
    await nc.jetstream().delete_consumer(S.audit_stream, "audit-logger")
    metrics = Metrics()
    async with running(AuditLogger(settings, metrics=metrics)):
        # the new consumer starts at the beginning of the stream: everything again
        await wait_for(lambda: metrics.registry.get_sample_value(
            "ragbus_audit_records_total", {"actor": "audit-logger", "result": "duplicate"})
            == before)
    report = verify_store(store)
    assert (report.ok, report.duplicates) == (True, 0)
    assert len(recorded(store)) == 300


async def test_an_event_repeated_after_the_duplicate_window_is_stored_once(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    store = tmp_path / "audit"
    settings = make_settings(nats_url, store, duplicate_window_s=0.5, publish_retry_s=0.2)
    await ensure_audit_stream(nc, settings)
    event = AuditEvent(kind="rate.limited", actor="bridge")
    js = nc.jetstream()
    await js.publish(S.audit("bridge", event.kind), msgspec.json.encode(event),
                     headers={MSG_ID_HEADER: event.event_id})
    async with running(AuditLogger(settings)) as (logger,):
        await wait_for(lambda: len(recorded(logger.store.directory)) >= 1)
    await anyio.sleep(0.7)  # past the server's window: a very late retry becomes a 2nd message
    await js.publish(S.audit("bridge", event.kind), msgspec.json.encode(event),
                     headers={MSG_ID_HEADER: event.event_id})
    info = await js.stream_info(S.audit_stream, subjects_filter=S.audit("bridge", event.kind))
    assert info.state.subjects == {S.audit("bridge", event.kind): 2}
    metrics = Metrics()
    async with running(AuditLogger(settings, metrics=metrics)):  # a restarted logger
        await wait_for(lambda: metrics.registry.get_sample_value(
            "ragbus_audit_records_total", {"actor": "audit-logger", "result": "duplicate"})
            == 1)
    assert [e.event_id for e in recorded(store)] == [event.event_id]


async def test_a_second_logger_on_the_same_store_refuses_to_start(
    nats_url: str, tmp_path: Path
) -> None:
    settings = make_settings(nats_url, tmp_path / "audit")
    async with running(AuditLogger(settings)):
        with pytest.raises(StoreLockedError):
            await AuditLogger(settings).serve()


# -- a crash in the middle of a stream of events --------------------------------------------
def logger_process(nats_url: str, store: Path, cwd: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "RAGBUS_NATS__URL": nats_url, "RAGBUS_AUDIT__STORE_DIR": str(store),
           "RAGBUS_AUDIT__ACK_WAIT_S": "2", "RAGBUS_AUDIT__BATCH_SIZE": "200",
           "RAGBUS_METRICS__ENABLED": "false", "RAGBUS_LOGGING__LEVEL": "warning"}
    return subprocess.Popen(
        [*RAGBUS, "actor", "audit-logger", "--no-supervise"], cwd=cwd, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def verify_cli(store: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli(["audit", "verify", "--store", str(store)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


async def test_killing_the_logger_mid_stream_loses_and_duplicates_nothing(
    nats_url: str, nc: NATS, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL of a real process: no drain, no acks, possibly a batch written but not
    acknowledged. (Cancelling an in-process task would let shielded code finish; a
    killed process cannot.)"""
    total = 10_000
    store = tmp_path / "audit"
    settings = make_settings(nats_url, store, ack_wait_s=2.0, batch_size=200)
    audit = AuditPublisher(settings, actor="tester")
    victim = logger_process(nats_url, store, tmp_path)

    async def kill_mid_stream() -> None:
        await wait_for(lambda: stored(store) >= 3000, timeout=30)
        victim.send_signal(signal.SIGKILL)  # while events keep coming
        await anyio.to_thread.run_sync(victim.wait)

    try:
        async with anyio.create_task_group() as tg:
            await tg.start(audit.run, nc)
            async with anyio.create_task_group() as crash:
                crash.start_soon(kill_mid_stream)
                for sent in range(total):
                    await audit.emit("query.received", request_id=f"{sent:032x}")
                    if sent % 100 == 99:
                        await anyio.sleep(0.02)  # a steady stream, not one burst
            assert await audit.flush(30)
            tg.cancel_scope.cancel()
    finally:
        if victim.poll() is None:
            victim.kill()
    crashed_at = stored(store)
    assert 3000 <= crashed_at < total
    async with running(AuditLogger(settings)):
        await wait_for(lambda: len(recorded(store)) >= total, timeout=30)
        await anyio.sleep(2.5)  # past ack_wait: any late redelivery would show now
    report = verify_store(store)
    assert (report.ok, report.duplicates) == (True, 0), report
    events = recorded(store)
    assert len(events) == total
    assert {e.request_id for e in events} == {f"{i:032x}" for i in range(total)}
    code, text = verify_cli(store, capsys)
    assert code == 0, text

    # edit, delete or reorder any line: verify fails at that line
    [path] = sorted(store.glob("audit-*.jsonl"))
    lines = path.read_bytes().splitlines(keepends=True)
    edited = lines[4999].replace(b'"outcome":"ok"', b'"outcome":"denied"')
    assert edited != lines[4999]
    for name, changed, line in (
        ("edited", [*lines[:4999], edited, *lines[5000:]], 5000),
        ("deleted", [*lines[:6999], *lines[7000:]], 7000),
        ("reordered", [*lines[:99], lines[100], lines[99], *lines[101:]], 100),
    ):
        copy = tmp_path / name
        shutil.copytree(store, copy, ignore=shutil.ignore_patterns(".lock"))
        (copy / path.name).write_bytes(b"".join(changed))
        code, text = verify_cli(copy, capsys)
        assert code == 1, (name, text)
        assert f"{path.name} line {line} " in text, (name, text)


async def test_a_snapshot_holds_every_event_in_the_stream_and_restores_into_another_store(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    """``ragbus backup``'s part: the logger catches up with the stream before it copies,
    so an event JetStream acknowledged before the snapshot is in it; restored into
    another logger's store, the chain verifies, and that store's own records follow."""
    from ragbus.runtime import Client
    from ragbus.runtime.archive import fetch_object, open_backup_bucket, unpack
    from ragbus.subjects import Restore, Restored, Snapshot, Snapshotted

    first = make_settings(nats_url, tmp_path / "first")
    await ensure_audit_stream(nc, first)
    js = nc.jetstream()
    async with running(AuditLogger(first)):
        for i in range(50):
            event = AuditEvent(event_id=f"{i:032x}", kind="query.received", actor="test")
            await js.publish(S.audit("test", "query.received"), msgspec.json.encode(event))
        snap = await Client(nc, S).request(S.snapshot_audit, Snapshot(name="audit-1"),
                                           Snapshotted, timeout=30)
    obs = await open_backup_bucket(nc, S)
    await fetch_object(obs, "audit-1", tmp_path / "audit.tar.gz", sha256=snap.sha256)
    unpack(tmp_path / "audit.tar.gz", tmp_path / "unpacked")
    assert len(recorded(tmp_path / "unpacked")) == 50
    assert verify_store(tmp_path / "unpacked").ok

    second = make_settings(nats_url, tmp_path / "second")
    async with running(AuditLogger(second)) as (logger,):
        own = AuditEvent(event_id="f" * 32, kind="query.received", actor="test")
        await js.publish(S.audit("test", "query.received"), msgspec.json.encode(own))
        await wait_for(lambda: any(e.event_id == "f" * 32
                                   for e in recorded(logger.store.directory)))
        done = await Client(nc, S).request(S.restore_audit, Restore(
            name="audit-1", sha256=snap.sha256), Restored, timeout=30)
        after = AuditEvent(event_id="e" * 32, kind="query.received", actor="test")
        await js.publish(S.audit("test", "query.received"), msgspec.json.encode(after))
        await wait_for(lambda: any(e.event_id == "e" * 32
                                   for e in recorded(logger.store.directory)))
    report = verify_store(tmp_path / "second")
    assert report.ok
    ids = [e.event_id for e in recorded(tmp_path / "second")]
    assert ids == [*(f"{i:032x}" for i in range(50)), "f" * 32, "e" * 32]
    assert done.details["records"] == report.records - 1
