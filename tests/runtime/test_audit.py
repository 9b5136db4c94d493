"""The audit publisher: masked events, on the stream exactly once, never blocking for long."""

from __future__ import annotations

from typing import Any

import anyio
import msgspec
import pytest
from nats.js.api import AckPolicy, ConsumerConfig
from structlog.testing import capture_logs

from ragbus.config import AuditSettings, NatsSettings, Secret, Settings
from ragbus.runtime import Metrics, connect
from ragbus.runtime import audit as audit_module
from ragbus.runtime.audit import AuditPublisher, ensure_audit_stream
from ragbus.runtime.connection import NATS
from ragbus.subjects import MSG_ID_HEADER, AuditEvent, AuditKind, AuditOutcome, Subjects

S = Subjects()


def audit_settings(settings: Settings, **audit: Any) -> Settings:
    return msgspec.structs.replace(settings, audit=AuditSettings(**audit))


async def stream_events(nc: NATS, expect: int,
                        timeout: float = 5.0) -> list[tuple[Any, AuditEvent]]:
    """(headers, event) of what the audit stream holds, read by a throwaway consumer."""
    js = nc.jetstream()
    sub = await js.pull_subscribe(S.audit_all, stream=S.audit_stream,
                                  config=ConsumerConfig(ack_policy=AckPolicy.NONE))
    got: list[tuple[Any, AuditEvent]] = []
    with anyio.move_on_after(timeout):
        while len(got) < expect:
            try:
                msgs = await sub.fetch(expect - len(got), timeout=0.5)
            except TimeoutError:
                continue
            got += [(m.headers, msgspec.json.decode(m.data, type=AuditEvent)) for m in msgs]
    # and nothing more than expected
    try:
        extra = await sub.fetch(1, timeout=0.3)
    except TimeoutError:
        extra = []
    await sub.unsubscribe()
    return got + [(m.headers, msgspec.json.decode(m.data, type=AuditEvent)) for m in extra]


async def test_events_reach_the_stream_with_their_id_as_msg_id(
    nc: NATS, settings: Settings
) -> None:
    audit = AuditPublisher(settings, actor="tester", instance="i1")
    async with anyio.create_task_group() as tg:
        await tg.start(audit.run, nc)
        assert await audit.emit(AuditKind.QUERY_RECEIVED, request_id="r1", session="s1",
                                duration_ms=1.5, sizes={"top_k": 5})
        assert await audit.emit(AuditKind.DOC_DELETED, subject="doc-7",
                                outcome=AuditOutcome.FAILED, code="NOT_FOUND")
        assert await audit.flush()
        tg.cancel_scope.cancel()
    got = await stream_events(nc, 2)
    assert [e.kind for _, e in got] == ["query.received", "doc.deleted"]
    for headers, event in got:
        assert headers[MSG_ID_HEADER] == event.event_id
        assert event.actor == "tester"
        assert event.instance == "i1"
    first, second = got[0][1], got[1][1]
    assert (first.request_id, first.session, first.duration_ms, first.sizes) == (
        "r1", "s1", 1.5, {"top_k": 5})
    assert (second.subject, second.outcome, second.code) == ("doc-7", AuditOutcome.FAILED,
                                                             "NOT_FOUND")


async def test_an_event_is_published_under_its_actors_bus_role(
    nc: NATS, settings: Settings
) -> None:
    """Each role may publish only under its own name, so the subject says who published."""
    publishers = [AuditPublisher(settings, actor="context-trimmer"),
                  AuditPublisher(settings, actor="audit-logger"),
                  AuditPublisher(settings, actor="bench", role="admin"),
                  AuditPublisher(settings, actor="tester")]
    assert [p.role for p in publishers] == ["trimmer", "audit", "admin", "tester"]
    sub = await nc.subscribe(S.audit_all)
    async with anyio.create_task_group() as tg:
        for p in publishers:
            await tg.start(p.run, nc)
            assert await p.emit(AuditKind.ANSWER_DONE, request_id=p.actor)
            assert await p.flush()
        tg.cancel_scope.cancel()
    subjects = [(await sub.next_msg(2)).subject for _ in publishers]
    assert subjects == ["rag.audit.trimmer.answer.done", "rag.audit.audit.answer.done",
                        "rag.audit.admin.answer.done", "rag.audit.tester.answer.done"]


async def test_a_retried_event_is_stored_once(nc: NATS, settings: Settings) -> None:
    audit = AuditPublisher(settings, actor="tester")
    event = audit.event("answer.done", request_id="r1")
    async with anyio.create_task_group() as tg:
        await tg.start(audit.run, nc)
        for _ in range(3):  # as a publisher does when an acknowledgement is lost
            assert await audit.put(event)
        assert await audit.flush()
        tg.cancel_scope.cancel()
    got = await stream_events(nc, 1)
    assert [e.event_id for _, e in got] == [event.event_id]


async def test_personal_data_and_credentials_are_masked_before_publishing(
    nc: NATS, settings: Settings
) -> None:
    known = "correct-horse-battery-staple"
    settings = audit_settings(settings, text="full")
    audit = AuditPublisher(settings, actor="tester", secrets=[known])
    question = (f"I am jane.doe@example.com, call me on +1 415 555 0100 or (020) 7946 0958; "
                f"my key is sk-abcdefghijklmnop1234 and the header was Bearer abc.def.ghi12345; "
                f"aws AKIAABCDEFGHIJKLMNOP and the password {known}")
    async with anyio.create_task_group() as tg:
        await tg.start(audit.run, nc)
        await audit.emit("query.received", question=question, session="bob@example.org",
                         details={"password": "hunter2", "api_key": "k-123456",
                                  "note": "reach 555-123-4567", "tokens_used": 12,
                                  "nested": {"authorization": "Basic dXNlcjpwYXNz"}})
        assert await audit.flush()
        tg.cancel_scope.cancel()
    [(_, event)] = await stream_events(nc, 1)
    wire = msgspec.json.encode(event).decode()
    for leaked in ("jane.doe@example.com", "415 555 0100", "7946 0958", "sk-abcdefghijklmnop",
                   "abc.def.ghi12345", "AKIAABCDEFGHIJKLMNOP", known, "bob@example.org",
                   "hunter2", "k-123456", "555-123-4567", "dXNlcjpwYXNz"):
        assert leaked not in wire
    assert event.text_mode == "full"
    assert event.question is not None
    assert "I am <email>, call me on <phone>" in event.question
    assert event.session == "<email>"
    assert event.details["tokens_used"] == 12  # counts are not secrets
    assert event.sizes["question_chars"] == len(question)


@pytest.mark.parametrize("mode", ["full", "hashed", "omitted"])
def test_question_and_answer_text_is_kept_as_configured(settings: Settings, mode: str) -> None:
    audit = AuditPublisher(audit_settings(settings, text=mode), actor="tester")
    a = audit.event("answer.done", question="What is NATS?", answer="A message bus.")
    b = audit.event("answer.done", question="What is NATS?", answer="Something else.")
    assert a.text_mode == mode
    assert a.sizes == {"question_chars": 13, "answer_chars": 14}
    if mode == "full":
        assert (a.question, a.answer) == ("What is NATS?", "A message bus.")
    elif mode == "hashed":
        assert a.question is not None
        assert a.question.startswith("sha256:")
        assert a.question == b.question  # the same question can still be matched ...
        assert a.answer != b.answer
        assert "NATS" not in msgspec.json.encode(a).decode()  # ... without keeping it
    else:
        assert (a.question, a.answer) == (None, None)


async def test_without_a_hash_key_the_publisher_warns_once_that_hashes_can_be_guessed(
    nc: NATS, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Development runs without a key; a short question's SHA-256 is found by trying
    candidates, so say so when publishing starts, once per process, not once per actor."""
    monkeypatch.setattr(audit_module, "_unkeyed_warned", False)
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            for actor in ("retriever", "router"):
                await tg.start(AuditPublisher(audit_settings(settings), actor=actor).run, nc)
            tg.cancel_scope.cancel()
    warnings = [e for e in logs if e["event"] == "audit.unkeyed_hash"]
    assert len(warnings) == 1
    assert "audit.hash_key" in warnings[0]["hint"]
    monkeypatch.setattr(audit_module, "_unkeyed_warned", False)
    with capture_logs() as logs:
        for mode in ("full", "omitted"):  # nothing is hashed: nothing to warn about
            AuditPublisher(audit_settings(settings, text=mode), actor="x").warn_if_unkeyed()
        AuditPublisher(audit_settings(settings, hash_key=Secret("k" * 32)),
                       actor="router").warn_if_unkeyed()
    assert [e for e in logs if e["event"] == "audit.unkeyed_hash"] == []


def test_a_hash_key_makes_hashes_unguessable(settings: Settings) -> None:
    plain = AuditPublisher(audit_settings(settings), actor="t").event("x.y", question="yes")
    keyed = AuditPublisher(audit_settings(settings, hash_key=Secret("k" * 32)),
                           actor="t").event("x.y", question="yes")
    assert keyed.question is not None
    assert keyed.question.startswith("hmac-sha256:")
    assert keyed.question.split(":")[1] != (plain.question or "").split(":")[1]


def test_a_kind_that_is_not_a_subject_token_is_refused(settings: Settings) -> None:
    audit = AuditPublisher(settings, actor="t")
    with pytest.raises(ValueError, match="audit kind"):
        audit.event("query received")
    with pytest.raises(ValueError, match="audit kind"):
        audit.event("query.>")


async def test_a_full_queue_drops_after_a_bounded_wait_and_counts_it(
    settings: Settings,
) -> None:
    metrics = Metrics()
    audit = AuditPublisher(audit_settings(settings, queue_size=2, enqueue_timeout_ms=20),
                           actor="tester", metrics=metrics)
    # nothing publishes (run() is not started): the queue fills
    with anyio.fail_after(2):
        assert await audit.emit("query.received")
        assert await audit.emit("query.received")
        assert not await audit.emit("query.received")
        assert not audit.emit_nowait("query.received")
    dropped = metrics.registry.get_sample_value(
        "ragbus_audit_events_total", {"actor": "tester", "result": "dropped"})
    assert dropped == 2
    assert audit.pending == 2


async def test_events_wait_for_a_missing_stream_and_arrive_once_it_exists(
    nc: NATS, settings: Settings
) -> None:
    audit = AuditPublisher(settings, actor="tester")
    async with anyio.create_task_group() as tg:
        await tg.start(lambda task_status: audit.run(nc, ensure_stream=False,
                                                     task_status=task_status))
        assert await audit.emit("config.loaded")
        await anyio.sleep(0.3)  # publishing finds no stream and keeps retrying
        assert audit.pending == 1
        await ensure_audit_stream(nc, settings)
        assert await audit.flush(10)
        tg.cancel_scope.cancel()
    got = await stream_events(nc, 1)
    assert [e.kind for _, e in got] == ["config.loaded"]


async def test_stopping_flushes_what_is_still_queued(nc: NATS, settings: Settings) -> None:
    other = await connect(settings.nats, name="publisher")  # closed last, as an actor does
    audit = AuditPublisher(settings, actor="tester")
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(audit.run, other)
            for i in range(300):
                audit.emit_nowait("query.received", request_id=f"{i:032x}")
            tg.cancel_scope.cancel()  # the actor stops with events still queued
        assert audit.pending == 0
    finally:
        await other.close()
    got = await stream_events(nc, 300)
    assert len({e.event_id for _, e in got}) == len(got) == 300


async def test_disabled_auditing_publishes_nothing(nc: NATS, settings: Settings) -> None:
    audit = AuditPublisher(audit_settings(settings, enabled=False), actor="tester")
    assert not await audit.emit("query.received")
    assert audit.pending == 0


def test_retries_must_end_inside_the_duplicate_window() -> None:
    with pytest.raises(ValueError, match="duplicate_window_s"):
        AuditSettings(publish_retry_s=600, duplicate_window_s=300)
    with pytest.raises(ValueError, match="batch_size"):
        AuditSettings(batch_size=1000, max_ack_pending=10)


def test_a_bad_audit_setting_names_its_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from ragbus.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="audit"):
        load_settings(env={"RAGBUS_AUDIT__PUBLISH_RETRY_S": "900"})
    with pytest.raises(ConfigError, match=r"audit\.text"):
        load_settings(env={"RAGBUS_AUDIT__TEXT": "partly"})


def test_a_publisher_can_be_built_before_any_event_loop_runs() -> None:
    # actors build theirs in __init__, which may run outside the loop
    audit = AuditPublisher(Settings(nats=NatsSettings(url="nats://127.0.0.1:1")), actor="early")
    assert audit.emit_nowait("config.loaded")
    assert audit.pending == 1


def test_config_loaded_tells_settings_apart_without_revealing_secrets() -> None:
    from ragbus.runtime.audit import config_summary

    base = config_summary(Settings(nats=NatsSettings(password=Secret("first-password"))))
    assert base == config_summary(Settings(nats=NatsSettings(password=Secret("other-one"))))
    assert base["sha256"] != config_summary(Settings(subject_prefix="other"))["sha256"]
    assert (base["environment"], base["audit_text"], base["security"]) == (
        "development", "hashed", False)
    assert "first-password" not in str(base)


async def test_a_second_run_only_waits_while_the_first_publishes(
    nc: NATS, settings: Settings
) -> None:
    audit = AuditPublisher(settings, actor="tester")
    async with anyio.create_task_group() as tg:
        await tg.start(audit.run, nc)
        await tg.start(audit.run, nc)  # e.g. an actor and its base class both start it
        assert await audit.emit("config.loaded")
        assert await audit.flush()
        tg.cancel_scope.cancel()
    assert [e.kind for _, e in await stream_events(nc, 1)] == ["config.loaded"]
