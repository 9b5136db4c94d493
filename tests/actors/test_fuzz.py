"""Malformed messages on every subject ragbus listens on, against the real actors.

One real nats-server, every actor that listens on the bus (the real embedding model,
the embedded Qdrant engine, the extractive provider), and a few thousand generated
messages (``tests.support.fuzz``) fired without waiting, half as requests with a reply
subject and half as plain publishes. The subjects are read from the actors' own NATS
subscriptions and the server's JetStream streams, so a subject added later is fuzzed
too, or fails this test until it has a message type here.

What must hold: every malformed request that has a reply subject gets an error reply
with the code its malformation calls for, and every malformed stream request whose
envelope can still be read gets a ``failed`` event on its ``reply_to``; well-formed
requests of random content are served or refused with a code, never INTERNAL, and a
stream ends; nothing an actor logs is an error; and afterwards every actor still
answers ``$SRV.PING`` and a real query is answered end to end.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import msgspec
import pytest
import structlog
from nats.aio.msg import Msg
from structlog.testing import capture_logs

from ragbus.actors.audit import AuditLogger
from ragbus.actors.embedder import Embedder
from ragbus.actors.ingestor import Ingestor
from ragbus.actors.retriever import Retriever
from ragbus.actors.router import Router
from ragbus.actors.trimmer import ContextTrimmer
from ragbus.config import (
    IngestorSettings,
    NatsSettings,
    ProviderSettings,
    RouterSettings,
    RuntimeSettings,
    Settings,
)
from ragbus.runtime import Actor, Client, Metrics, discover
from ragbus.runtime.connection import NATS
from ragbus.subjects import (
    ERROR_HEADER,
    AuditEvent,
    BreakerTransition,
    Cancel,
    DocList,
    DocListed,
    Done,
    Embed,
    Embedded,
    Failed,
    Query,
    Subjects,
)
from tests.support import running
from tests.support.fuzz import Shot, Target, shots

S = Subjects()
LIMIT = 64 * 1024  # runtime.max_message_bytes here: huge strings stay cheap to send
MESSAGES = 2400
#: what listens beside the kernel's endpoints, and what it decodes
OTHERS: dict[str, type[msgspec.Struct]] = {
    S.cancel_all: Cancel,
    S.breaker_all: BreakerTransition,
    S.audit_all: AuditEvent,
}
#: subscriptions and streams that are not for other parties to publish on: inboxes, the
#: services protocol, the server's advisories, and KV and object store buckets (state the
#: actors write themselves, where a writer needs the bucket's own permission)
PRIVATE = ("_INBOX.", "$SRV.", "$JS.EVENT.ADVISORY.", "$KV.", "$O.")
#: the index stream (#18): only the ingestor and the retriever may write it, as they
#: alone write the buckets; an entry no replica can read is logged as the error it is
#: and skipped by every replica alike (actors/retriever/_replica.py)
WRITTEN_BY_ACTORS = frozenset({S.index_log_all})
FINAL = {"done", "failed", "cancelled"}


def system(settings: Settings, metrics: Metrics) -> tuple[Actor, ...]:
    return (Embedder(settings, metrics=metrics), Retriever(settings, metrics=metrics),
            Ingestor(settings, metrics=metrics), ContextTrimmer(settings, metrics=metrics),
            Router(settings, metrics=metrics), AuditLogger(settings, metrics=metrics))


def targets(actors: tuple[Actor, ...], streams: dict[str, str]) -> list[Target]:
    """Every subject the actors subscribe to, and every JetStream stream they consume."""
    types: dict[str, Target] = {}
    for actor in actors:
        for spec in actor.endpoint_specs():
            for subject, _ in actor.routes(spec):
                types[subject] = Target(subject, spec.request, answers=spec.durable is None)
    for subject, message in OTHERS.items():
        types.setdefault(subject, Target(subject, message, answers=False))
    # nats-py keeps no public list of a connection's subscriptions
    listened = {sub.subject for actor in actors for sub in actor.nc._subs.values()}
    listened |= set(streams)
    listened -= WRITTEN_BY_ACTORS
    unknown = sorted(s for s in listened if not s.startswith(PRIVATE) and s not in types)
    assert not unknown, f"subjects with no message type to fuzz them with: {unknown}"
    return [types[s] for s in sorted(listened) if s in types]


@dataclass
class Outcomes:
    """What came back: replies by shot, stream events by reply_to."""

    replies: dict[int, Msg] = field(default_factory=dict)
    events: dict[str, list[dict[str, object]]] = field(default_factory=dict)
    arrived: anyio.Event = field(default_factory=anyio.Event)

    async def on_reply(self, msg: Msg) -> None:
        self.replies[int(msg.subject.rsplit(".", 1)[1])] = msg
        self.arrived.set()

    async def on_event(self, msg: Msg) -> None:
        try:
            event = json.loads(msg.data)
        except ValueError:
            event = {"type": "undecodable"}
        self.events.setdefault(msg.subject, []).append(event)
        self.arrived.set()

    async def settle(self, plan: list[tuple[Shot, bool, str | None]], wait_s: float) -> None:
        """Until every awaited reply and final event is in, or ``wait_s`` is over."""
        with anyio.move_on_after(wait_s):
            while not done(plan, self):
                self.arrived = anyio.Event()
                with anyio.move_on_after(0.5):
                    await self.arrived.wait()


def owned_reply_to(shot: Shot, i: int) -> tuple[bytes, str | None]:
    """The payload with a well-formed ``reply_to`` made unique to this shot (so its events
    can be told apart), and that subject; malformed ones are sent as they are."""
    try:
        doc = json.loads(shot.fuzz.data)
    except ValueError:
        return shot.fuzz.data, None
    if not (isinstance(doc, dict) and isinstance(doc.get("reply_to"), str)
            and doc["reply_to"].startswith("_INBOX.fuzz.")):
        return shot.fuzz.data, None
    doc["reply_to"] = f"_INBOX.fuzz.{i}"
    readable = isinstance(doc.get("request_id"), str) and shot.fuzz.kind not in (
        "bad_request_id", "huge_string")
    return json.dumps(doc).encode(), doc["reply_to"] if readable or shot.fuzz.expect is None \
        else None


def problems(plan: list[tuple[Shot, bool, str | None]], got: Outcomes) -> Iterator[str]:
    """Each expectation not met, described."""
    for i, (shot, asked, reply_to) in enumerate(plan):
        fuzz, where = shot.fuzz, f"#{i} {fuzz_name(shot)}"
        reply = got.replies.get(i)
        code = reply.headers.get(ERROR_HEADER) if reply and reply.headers else None
        if code == "INTERNAL":
            yield f"{where}: INTERNAL {reply.data[:200]!r}"  # type: ignore[union-attr]
        if asked and shot.target.answers and fuzz.expect is not None:
            if reply is None:
                yield f"{where}: no reply"
            elif code != fuzz.expect.value:
                yield f"{where}: {code or 'no error'} instead of {fuzz.expect.value}"
        if reply_to is not None and shot.target.answers:
            kinds = [str(e.get("type")) for e in got.events.get(reply_to, [])]
            if not FINAL & set(kinds) and not (asked and code):
                yield f"{where}: no final event on reply_to (got {kinds})"
            for event in got.events.get(reply_to, []):
                if event.get("type") == "failed" and event.get("code") == "INTERNAL":
                    yield f"{where}: failed INTERNAL {event.get('message')}"
                if (fuzz.expect is not None and event.get("type") == "failed"
                        and event.get("code") != fuzz.expect.value):
                    yield f"{where}: failed {event.get('code')} instead of {fuzz.expect}"


def fuzz_name(shot: Shot) -> str:
    return f"{shot.fuzz.kind} on {shot.subject}: {shot.fuzz.data[:160]!r}"


def done(plan: list[tuple[Shot, bool, str | None]], got: Outcomes) -> bool:
    for i, (shot, asked, reply_to) in enumerate(plan):
        if asked and shot.target.answers and shot.fuzz.expect is not None \
                and i not in got.replies:
            return False
        if reply_to is not None and shot.target.answers and i not in got.replies and not (
                FINAL & {str(e.get("type")) for e in got.events.get(reply_to, [])}):
            return False
    return True


async def test_every_subject_refuses_malformed_messages_with_a_code_and_nothing_crashes(
    nats_url: str, nc: NATS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a well-formed ingest job's random relative path stays here
    settings = Settings(
        nats=NatsSettings(url=nats_url), data_dir=str(tmp_path),
        runtime=RuntimeSettings(default_timeout_s=20, max_message_bytes=LIMIT,
                                max_queue_wait_s=None, drain_grace_s=2.0),
        ingestor=IngestorSettings(progress_interval_ms=0),
        router=RouterSettings(providers=[ProviderSettings(name="extractive",
                                                          kind="extractive")]),
    )
    metrics = Metrics()
    got = Outcomes()
    await nc.subscribe("_INBOX.fuzzr.*", cb=got.on_reply)
    await nc.subscribe("_INBOX.fuzz.>", cb=got.on_event)
    with capture_logs(processors=[structlog.processors.format_exc_info]) as logs:
        actors = system(settings, metrics)
        async with running(*actors):
            js = nc.jetstream()
            streams = {subject: info.config.name or "" for info in await js.streams_info()
                       for subject in info.config.subjects or ()}
            fired = shots(targets(actors, streams), MESSAGES, seed=19, limit=LIMIT)
            plan: list[tuple[Shot, bool, str | None]] = []
            for i, shot in enumerate(fired):
                data, reply_to = owned_reply_to(shot, i)
                asked = i % 2 == 0
                plan.append((shot, asked, reply_to))
                await nc.publish(shot.subject, data, reply=f"_INBOX.fuzzr.{i}" if asked else "")
            await nc.flush()
            await got.settle(plan, 90)

            # every actor is still there, and the system still answers
            answered = await discover(nc, "PING", wait_s=5, until=lambda found: len(
                {f.get("name") for f in found}) >= len(actors))
            embedded = await Client(nc).request(S.embed, Embed(texts=["still here"]), Embedded,
                                                timeout=30)
            listed = await Client(nc).request(S.docs("list"), DocList(), DocListed, timeout=30)
            query = Query(question="is anyone there?", reply_to=nc.new_inbox())
            events = [e async for e in Client(nc).stream(S.query, query, timeout=30)]

    found = list(problems(plan, got))
    kinds = Counter(shot.fuzz.kind for shot, _, _ in plan)
    assert not found, f"{len(found)} of {len(plan)} ({dict(kinds)}):\n" + "\n".join(found[:25])
    assert {a.name for a in actors} <= {str(f.get("name")) for f in answered}
    assert len(embedded.vectors) == embedded.dim * 4
    assert listed.total >= 0
    # a query still ends: answered, or refused with a code, as the shard may now be
    # another model's (a well-formed index update of random content is allowed to say so)
    assert isinstance(events[-1], Done) or (
        isinstance(events[-1], Failed) and events[-1].code != "INTERNAL"), events[-1]
    internal = [s for m in metrics.registry.collect() if m.name == "ragbus_errors"
                for s in m.samples if s.labels.get("code") == "INTERNAL" and s.value]
    assert not internal, internal
    errors = [e for e in logs if e.get("log_level") in ("error", "critical")]
    assert not errors, errors[:5]
    # not vacuous: many refusals were awaited and came, on reply subjects and on reply_to
    awaited = [i for i, (shot, asked, _) in enumerate(plan)
               if asked and shot.target.answers and shot.fuzz.expect is not None]
    failed_events = [r for _, _, r in plan if r is not None and any(
        e.get("type") == "failed" for e in got.events.get(r, []))]
    assert len(awaited) > MESSAGES // 4
    assert all(i in got.replies for i in awaited)
    assert len(failed_events) > 50
    # the fuzz reached every subject, with every kind of malformation
    assert {shot.target.subject for shot, _, _ in plan} >= {S.query, S.embed, S.cancel_all,
                                                            S.ingest_submit, S.audit_all}
    assert len(kinds) >= 10
