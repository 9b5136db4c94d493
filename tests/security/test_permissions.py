"""Least privilege, proven on a real nats-server with the generated users.

Each role logs in with its own password and inbox prefix; what it may not do is
refused by the server (a permissions violation, and nothing delivered), what it
must do still works.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel
import msgspec
import nats
import nats.errors
import pytest
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig

from ragbus.config import NatsSettings, Settings
from ragbus.runtime import ensure_kv, ensure_stream, kv_entries, read_stream
from ragbus.runtime.audit import ensure_audit_stream
from ragbus.runtime.cli import submit_job
from ragbus.runtime.security import connect_as, credentials
from ragbus.subjects import (
    MSG_ID_HEADER,
    AuditEvent,
    IngestRequest,
    InlineDocument,
    Subjects,
    ingest_stream,
    jobs_bucket,
)
from tests.security._roles import SECURITY, As, login

S = Subjects()
ACTORS = ("embedder", "retriever", "trimmer", "router", "ingestor", "bridge")


@pytest.fixture
async def logins(secure_url: str) -> AsyncIterator[dict[str, As]]:
    conns = {role: await login(secure_url, role) for role in (
        *ACTORS, "audit", "auditor", "client", "admin")}
    try:
        yield conns
    finally:
        for conn in conns.values():
            await conn.nc.close()


async def audit_stream_ready(audit: As) -> None:
    await ensure_audit_stream(audit.nc, Settings())


async def denied_requests(checks: list[tuple[As, str]]) -> list[tuple[str, str]]:
    """JetStream API calls the server must refuse (no answer, a violation reported), made
    at once; returns the (role, subject) pairs that were not refused."""
    allowed: list[tuple[str, str]] = []

    async def check(conn: As, subject: str) -> None:
        try:
            await conn.nc.request(subject, b"{}", timeout=0.5)
        except nats.errors.TimeoutError:
            if await conn.refused("publish", subject):
                return
        allowed.append((conn.role, subject))

    async with anyio.create_task_group() as tg:
        for conn, subject in checks:
            tg.start_soon(check, conn, subject)
    return allowed


async def settled(conn: As) -> None:
    """A barrier: the server has what this connection sent. nats-py queues SUB and PUB
    but writes its PING at once, so yield first to let the queued commands out."""
    await anyio.lowlevel.checkpoint()
    await conn.nc.flush()


async def collect(conn: As, subject: str) -> list[Msg]:
    got: list[Msg] = []

    async def keep(msg: Msg) -> None:
        got.append(msg)

    await conn.nc.subscribe(subject, cb=keep)
    await settled(conn)
    return got


# -- logging in ---------------------------------------------------------------------------
async def test_anonymous_and_wrong_password_connections_are_refused(secure_url: str) -> None:
    async def quiet(exc: Exception) -> None:
        pass

    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(secure_url, max_reconnect_attempts=0, allow_reconnect=False,
                           error_cb=quiet)
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(secure_url, user="embedder", password="not-the-password",
                           max_reconnect_attempts=0, allow_reconnect=False, error_cb=quiet)


async def test_connect_as_logs_in_as_the_role_only_when_security_is_on(secure_url: str) -> None:
    settings = NatsSettings(url=secure_url, max_reconnect_attempts=0)
    nc = await connect_as(settings, SECURITY, "embedder")
    try:
        assert nc.is_connected
    finally:
        await nc.close()
    off = msgspec.structs.replace(SECURITY, enabled=False)
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await connect_as(settings, off, "embedder", allow_reconnect=False)


# -- what each role must be able to do ----------------------------------------------------
async def test_requests_replies_and_streamed_events_flow_between_the_right_roles(
    logins: dict[str, As],
) -> None:
    embedder, retriever, client = logins["embedder"], logins["retriever"], logins["client"]

    async def embed(msg: Msg) -> None:
        await msg.respond(b"vectors")

    await embedder.nc.subscribe(S.embed, queue="embedder", cb=embed)
    await settled(embedder)
    reply = await retriever.nc.request(S.embed, b"{}", timeout=2)  # allow_responses
    assert reply.data == b"vectors"

    queries = await retriever.nc.subscribe(S.query, queue="retriever")
    events = await client.nc.subscribe("_INBOX.client.q1")
    cancels = await embedder.nc.subscribe(S.cancel_all)
    for conn in (retriever, client, embedder):
        await settled(conn)
    await client.nc.publish(S.query, b'{"reply_to": "_INBOX.client.q1"}')
    await client.nc.publish(S.cancel("q1"), b"{}")
    await settled(client)
    assert (await queries.next_msg(timeout=2)).data.startswith(b'{"reply_to"')
    assert (await cancels.next_msg(timeout=2)).subject == S.cancel("q1")
    await retriever.nc.publish("_INBOX.client.q1", b'{"type": "sources"}')  # streamed event
    assert (await events.next_msg(timeout=2)).data == b'{"type": "sources"}'
    assert {r: c.errors for r, c in logins.items() if c.errors} == {}


async def test_who_starts_a_request_on_its_own_can_cancel_it(logins: dict[str, As]) -> None:
    """The bridge (a socket closed), the trimmer (a brief's summary given up) and the
    CLI tell every actor to stop work they asked for."""
    cancels = await collect(logins["router"], S.cancel_all)
    for role in ("bridge", "trimmer", "client", "admin"):
        await logins[role].nc.publish(S.cancel(f"by-{role}"), b"{}")
        await settled(logins[role])
    await anyio.sleep(0.2)
    assert sorted(m.subject for m in cancels) == sorted(
        S.cancel(f"by-{r}") for r in ("bridge", "trimmer", "client", "admin"))
    assert {r: c.errors for r, c in logins.items() if c.errors} == {}


async def test_every_actor_can_write_audit_events_and_only_readers_read_them(
    logins: dict[str, As],
) -> None:
    await audit_stream_ready(logins["audit"])
    for role in (*ACTORS, "audit"):
        event = AuditEvent(kind="config.loaded", actor=role)
        ack = await logins[role].nc.jetstream().publish(
            S.audit(role, event.kind), msgspec.json.encode(event), timeout=2,
            headers={MSG_ID_HEADER: event.event_id})
        assert ack.stream == S.audit_stream
    # the audit-logger's durable consumer, and a third party's own
    for role, durable in (("audit", "audit-logger"), ("auditor", "siem")):
        js = logins[role].nc.jetstream()
        sub = await js.pull_subscribe(S.audit_all, durable=durable, stream=S.audit_stream,
                                      config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT))
        msgs = await sub.fetch(10, timeout=2)
        assert len(msgs) == len(ACTORS) + 1
        for msg in msgs:
            await msg.ack()
    assert {r: c.errors for r, c in logins.items() if c.errors} == {}


async def test_a_role_writes_audit_events_only_under_its_own_name(
    logins: dict[str, As],
) -> None:
    """The subject names the publisher's role, so an event's origin is the bus's word,
    not the event's: the bridge cannot file a ``doc.deleted`` as the ingestor."""
    await audit_stream_ready(logins["audit"])
    js = logins["audit"].nc.jetstream()
    before = (await js.stream_info(S.audit_stream)).state.messages
    attempts = [("bridge", "ingestor"), ("embedder", "router"), ("router", "audit"),
                ("audit", "bridge"), ("retriever", "trimmer")]
    for role, other in attempts:
        await logins[role].nc.publish(S.audit(other, "doc.deleted"), msgspec.json.encode(
            AuditEvent(kind="doc.deleted", actor=other)))
        await settled(logins[role])
    for role, other in attempts:
        assert await logins[role].refused("publish", S.audit(other, "doc.deleted")), role
    for role in ("client", "admin", "auditor"):  # they publish no audit events at all
        await logins[role].nc.publish(S.audit(role, "doc.deleted"), b"{}")
        await settled(logins[role])
        assert await logins[role].refused("publish", S.audit(role, "doc.deleted")), role
    assert (await js.stream_info(S.audit_stream)).state.messages == before


async def test_ingestion_roles_reach_their_stream_and_buckets(logins: dict[str, As]) -> None:
    admin, ingestor = logins["admin"], logins["ingestor"]
    request = IngestRequest(documents=[InlineDocument(id="d", text="hello")])
    await submit_job(admin.nc, request)  # ensure stream + jobs bucket + JetStream publish
    await ensure_stream(ingestor.nc, ingest_stream(S))
    sub = await ingestor.nc.jetstream().pull_subscribe(
        S.ingest_submit, durable="ingestor", stream=S.ingest_stream)
    [msg] = await sub.fetch(1, timeout=2)
    assert msgspec.json.decode(msg.data, type=IngestRequest).job_id == request.job_id
    await msg.ack()
    jobs = await ensure_kv(ingestor.nc, jobs_bucket(S))
    await jobs.put(request.job_id, b"{}")
    assert [e.key for e in await kv_entries(jobs)] == [request.job_id]  # a watcher works
    assert (admin.errors, ingestor.errors) == ([], [])


# -- what roles may not do ----------------------------------------------------------------
async def test_an_actor_cannot_publish_to_another_actors_subjects(
    logins: dict[str, As],
) -> None:
    embedder = logins["embedder"]
    witnesses = {
        S.query: await collect(logins["retriever"], S.query),
        S.generate: await collect(logins["router"], S.generate),
        S.trim: await collect(logins["trimmer"], S.trim),
        S.index_apply("default"): await collect(logins["retriever"], "rag.index.apply.*"),
        S.breaker("openai"): await collect(logins["router"], S.breaker_all),
        S.docs("delete"): await collect(logins["ingestor"], "rag.docs.*"),
    }
    for subject in witnesses:
        await embedder.nc.publish(subject, b"{}")
    await settled(embedder)
    for subject in witnesses:
        assert await embedder.refused("publish", subject), subject
    await anyio.sleep(0.2)
    assert {subject: len(got) for subject, got in witnesses.items()} == dict.fromkeys(
        witnesses, 0)
    # nor listen to what others serve, nor to their replies
    for subject in (S.query, S.generate, "_INBOX.>", "_INBOX.retriever.>", ">"):
        await embedder.nc.subscribe(subject)
        await settled(embedder)
        assert await embedder.refused("subscription", subject), subject


async def test_no_actor_can_read_the_audit_stream(logins: dict[str, As]) -> None:
    await audit_stream_ready(logins["audit"])
    stream = S.audit_stream
    for role in ACTORS:
        await logins[role].nc.subscribe(S.audit_all)
        await settled(logins[role])
        assert await logins[role].refused("subscription", S.audit_all), role
    subjects = (f"$JS.API.CONSUMER.CREATE.{stream}", f"$JS.API.CONSUMER.CREATE.{stream}.x",
                f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.x",
                f"$JS.API.STREAM.MSG.GET.{stream}", f"$JS.API.DIRECT.GET.{stream}",
                f"$JS.API.CONSUMER.MSG.NEXT.{stream}.audit-logger",
                f"$JS.API.STREAM.DELETE.{stream}")
    assert await denied_requests([(logins[role], subject) for role in ACTORS
                                  for subject in subjects]) == []


async def test_a_client_cannot_publish_ingest_or_breaker_messages(
    logins: dict[str, As],
) -> None:
    client, admin = logins["client"], logins["admin"]
    await ensure_stream(admin.nc, ingest_stream(S))
    breakers = await collect(logins["router"], S.breaker_all)
    await client.nc.publish(S.ingest_submit, msgspec.json.encode(IngestRequest(path="/etc")))
    await client.nc.publish(S.breaker("openai"), b'{"state": "open"}')
    for subject in (S.docs("delete"), S.audit("client", "doc.purged"), S.embed, S.generate):
        await client.nc.publish(subject, b"{}")
    await settled(client)
    for subject in (S.ingest_submit, S.breaker("openai"), S.docs("delete"),
                    S.audit("client", "doc.purged"), S.embed, S.generate):
        assert await client.refused("publish", subject), subject
    await anyio.sleep(0.2)
    assert breakers == []
    assert (await admin.nc.jetstream().stream_info(S.ingest_stream)).state.messages == 0
    for subject in ("_INBOX.>", "_INBOX.admin.>", S.query, S.audit_all):
        await client.nc.subscribe(subject)
        await settled(client)
        assert await client.refused("subscription", subject), subject


async def test_the_auditor_cannot_take_the_audit_loggers_events(logins: dict[str, As]) -> None:
    audit, auditor = logins["audit"], logins["auditor"]
    await audit_stream_ready(audit)
    await audit.nc.jetstream().add_consumer(S.audit_stream, ConsumerConfig(
        durable_name="audit-logger", name="audit-logger", ack_policy=AckPolicy.EXPLICIT))
    stream = S.audit_stream
    assert await denied_requests([(auditor, subject) for subject in (
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.audit-logger",
        f"$JS.API.CONSUMER.DELETE.{stream}.audit-logger",
        f"$JS.API.CONSUMER.CREATE.{stream}.audit-logger",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.audit-logger",
        f"$JS.API.STREAM.PURGE.{stream}", f"$JS.API.STREAM.UPDATE.{stream}")]) == []
    await auditor.nc.publish(S.audit("ingestor", "doc.deleted"), b"{}")  # nor forge events
    await settled(auditor)
    assert await auditor.refused("publish", S.audit("ingestor", "doc.deleted"))


def test_every_role_reads_only_its_own_inbox() -> None:
    from ragbus.runtime.security import roles

    for role in roles(S).values():
        inboxes = [s for s in role.subscribe if s.startswith("_INBOX")]
        assert inboxes == [f"_INBOX.{role.name}.>"]
        assert credentials(SECURITY, role.name).inbox_prefix == f"_INBOX.{role.name}"
        assert ">" not in role.subscribe


async def test_clients_and_the_bridge_rate_answers_the_audit_role_hears_and_replies(
    logins: dict[str, As],
) -> None:
    audit, client, bridge, router = (logins["audit"], logins["client"], logins["bridge"],
                                     logins["router"])

    async def recorded(msg: Msg) -> None:
        await msg.respond(b"kept")

    await audit.nc.subscribe(S.feedback, queue="audit-logger", cb=recorded)
    await settled(audit)
    for rater in (client, bridge):
        reply = await rater.nc.request(S.feedback, b'{"rating": "up"}', timeout=2)
        assert reply.data == b"kept"
    await router.nc.publish(S.feedback, b'{"rating": "down"}')  # no actor rates answers
    await settled(router)
    assert await router.refused("publish", S.feedback)
    assert {r: c.errors for r, c in logins.items() if c.errors and r != "router"} == {}


async def test_admin_reads_and_deletes_sessions_the_bridge_only_deletes_them(
    logins: dict[str, As],
) -> None:
    trimmer, admin, bridge, client = (logins["trimmer"], logins["admin"], logins["bridge"],
                                      logins["client"])

    async def served(msg: Msg) -> None:
        await msg.respond(b"served")

    await trimmer.nc.subscribe(S.session_all, queue="context-trimmer", cb=served)
    await settled(trimmer)
    for verb in ("get", "list", "delete"):
        reply = await admin.nc.request(S.session(verb), b"{}", timeout=2)
        assert reply.data == b"served"
    # the page's "new conversation": the bridge deletes (the socket's own session only)
    assert (await bridge.nc.request(S.session("delete"), b"{}", timeout=2)).data == b"served"
    await bridge.nc.publish(S.session("get"), b"{}")  # reading memory is not the bridge's
    await client.nc.publish(S.session("delete"), b"{}")  # nor is any session a client's
    await settled(bridge)
    await settled(client)
    assert await bridge.refused("publish", S.session("get"))
    assert await client.refused("publish", S.session("delete"))
    assert {r: c.errors for r, c in logins.items()
            if c.errors and r not in ("bridge", "client")} == {}


async def test_the_auditor_reads_the_audit_stream_as_ragbus_stats_does(
    logins: dict[str, As],
) -> None:
    audit, router, auditor = logins["audit"], logins["router"], logins["auditor"]
    await audit_stream_ready(audit)
    event = AuditEvent(kind="answer.done", actor="router", request_id="r1")
    await router.nc.jetstream().publish(S.audit("router", event.kind),
                                        msgspec.json.encode(event),
                                        headers={MSG_ID_HEADER: event.event_id})
    read = [msg async for msg in read_stream(auditor.nc, S.audit_stream,
                                             filter_subject=S.audit_all)]
    assert [msgspec.json.decode(m.data, type=AuditEvent).request_id for m in read] == ["r1"]
    assert auditor.errors == []
