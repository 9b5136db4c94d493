"""The requester's side of a streamed request: one loop for every client.

``Client.open_stream`` is what ``ragbus ask``, the bridge and the trimmer's brief
read events with: exactly one terminal event, UNAVAILABLE at once when nobody
serves the subject, DEADLINE_EXCEEDED (and a cancel on the bus) when nothing ends
the stream in time, and a cancel when the requester leaves early.
"""

from __future__ import annotations

import time

import anyio

from ragbus.config import Settings
from ragbus.runtime import Actor, Client, Context, codec, endpoint
from ragbus.runtime.client import STREAM_GRACE_S
from ragbus.runtime.connection import NATS
from ragbus.subjects import (
    Cancel,
    Cancelled,
    Done,
    ErrorCode,
    Failed,
    Subjects,
    Token,
    deadline_after,
)
from tests.support import Echo, StreamPing, running
from tests.support.echo import accepted_stream_subject, stream_subject

S = Subjects()
STREAM = stream_subject(S)
ACCEPTED = accepted_stream_subject(S)


async def cancels(nc: NATS) -> list[Cancel]:
    """Collects every Cancel published from now on (a list that fills as they arrive)."""
    seen: list[Cancel] = []

    async def keep(msg: object) -> None:
        seen.append(codec.decode(msg.data, Cancel))  # type: ignore[attr-defined]

    await nc.subscribe(S.cancel_all, cb=keep)
    await nc.flush()
    return seen


async def arrived(seen: list[Cancel], n: int = 1) -> None:
    """Until ``n`` cancels reached the subscription's callback (or 5 s)."""
    with anyio.fail_after(5):
        while len(seen) < n:  # noqa: ASYNC110 - filled by a subscription callback
            await anyio.sleep(0.01)


async def test_nobody_serving_the_subject_is_unavailable_at_once(nc: NATS) -> None:
    request = StreamPing(reply_to=nc.new_inbox(), deadline=deadline_after(30))
    started = time.monotonic()
    async with Client(nc, S).open_stream(STREAM, request, hint="start the echo actor") as events:
        got = [e async for e in events]
    assert time.monotonic() - started < 5  # not at the 30 s deadline
    assert len(got) == 1
    assert isinstance(got[0], Failed)
    assert got[0].code == ErrorCode.UNAVAILABLE
    assert got[0].message == f"no actor is serving {STREAM}: start the echo actor"


async def test_a_stream_that_stays_silent_ends_at_its_deadline_plus_grace(nc: NATS) -> None:
    seen = await cancels(nc)
    silent = await nc.subscribe("rag.test.silent")  # takes the request, never answers
    request = StreamPing(reply_to=nc.new_inbox(), deadline=deadline_after(0.3))
    started = time.monotonic()
    events = [e async for e in Client(nc, S).stream("rag.test.silent", request)]
    elapsed = time.monotonic() - started
    assert [type(e) for e in events] == [Failed]
    assert isinstance(events[0], Failed)
    assert events[0].code == ErrorCode.DEADLINE_EXCEEDED
    assert 0.3 <= elapsed < 0.3 + STREAM_GRACE_S + 1
    await arrived(seen)
    assert [c.request_id for c in seen] == [request.request_id]
    assert seen[0].reason == "the deadline passed"
    await silent.unsubscribe()


async def test_a_cancel_nobody_confirms_ends_with_a_cancelled_made_of_what_arrived(
    nc: NATS,
) -> None:
    seen = await cancels(nc)
    reply_to = nc.new_inbox()
    silent = await nc.subscribe("rag.test.silent")
    request = StreamPing(reply_to=reply_to, deadline=deadline_after(30))
    async with Client(nc, S).open_stream("rag.test.silent", request) as events:
        await nc.publish(reply_to, codec.encode(Token(request_id=request.request_id, seq=0,
                                                      text="half an ")))
        first = await events.__anext__()
        started = time.monotonic()
        await events.cancel("user pressed stop", wait_s=0.2)
        rest = [e async for e in events]
    assert isinstance(first, Token)
    assert time.monotonic() - started < 2
    assert rest == [Cancelled(request_id=request.request_id, partial_text_length=8,
                              tokens_used=1)]
    await arrived(seen)
    assert [(c.request_id, c.reason) for c in seen] == [(request.request_id,
                                                         "user pressed stop")]
    await silent.unsubscribe()


async def test_leaving_early_cancels_the_request_on_the_bus(
    settings: Settings, nc: NATS,
) -> None:
    seen = await cancels(nc)
    request = StreamPing(tokens=50, sleep_s=0.05, reply_to=nc.new_inbox())
    async with running(Echo(settings)):
        async with Client(nc, S).open_stream(STREAM, request, timeout=10) as events:
            async for event in events:
                assert isinstance(event, Token)
                break  # the requester goes away after the first token
        await arrived(seen)
    assert [(c.request_id, c.reason) for c in seen] == [(request.request_id,
                                                         "the requester went away")]


async def test_a_served_stream_ends_with_its_own_terminal_event(
    settings: Settings, nc: NATS,
) -> None:
    seen = await cancels(nc)
    async with running(Echo(settings)):
        request = StreamPing(tokens=3, reply_to=nc.new_inbox())
        events = [e async for e in Client(nc, S).stream(STREAM, request, timeout=10)]
    assert [type(e) for e in events] == [Token, Token, Token, Done]
    await anyio.sleep(0.2)
    assert seen == []  # a stream that ended cancels nothing


async def test_an_actor_handing_off_to_nobody_fails_the_request_at_once(
    settings: Settings, nc: NATS,
) -> None:
    """The kernel's hand-off: the actor publishes on, nobody takes it, the requester's
    ``reply_to`` gets UNAVAILABLE with the hint, and the actor counts it."""
    class Relay(Actor):
        name = "relay"

        @endpoint(lambda s: f"{s.prefix}.test.relay", request=StreamPing)
        async def relay(self, request: StreamPing, ctx: Context) -> None:
            await ctx.hand_off(f"{S.prefix}.test.nobody", request, hint="start nobody")

    relay = Relay(settings)
    async with running(relay):
        request = StreamPing(reply_to=nc.new_inbox())
        started = time.monotonic()
        events = [e async for e in Client(nc, S).stream(f"{S.prefix}.test.relay", request,
                                                        timeout=30)]
    assert time.monotonic() - started < 5
    assert len(events) == 1
    assert isinstance(events[0], Failed)
    assert events[0].code == ErrorCode.UNAVAILABLE
    assert events[0].message == f"no actor is serving {S.prefix}.test.nobody: start nobody"
    assert relay.metrics.errors.labels("relay", "hand_off", "UNAVAILABLE")._value.get() == 1


async def test_a_request_nobody_acknowledges_in_time_is_unavailable_and_cancelled(
    nc: NATS,
) -> None:
    """NATS delivered the query to a subscriber that never answers: what a process that
    died (or hangs) just after taking it looks like from outside. With ``accept_within``
    the requester learns it then, not at its deadline, and the request is cancelled."""
    taken = await nc.subscribe(S.query)  # takes every query, acknowledges none
    await nc.flush()
    seen = await cancels(nc)
    request = StreamPing(reply_to=nc.new_inbox(), deadline=deadline_after(60))
    async with Client(nc, S).open_stream(S.query, request, accept_within=0.5,
                                         hint="start the retriever") as events:
        got = [e async for e in events]
    assert (await taken.next_msg(timeout=1)).reply  # it was delivered, with a reply subject
    assert len(got) == 1
    assert isinstance(got[0], Failed)
    assert got[0].code == ErrorCode.UNAVAILABLE
    assert got[0].message.startswith(f"nobody accepted the request on {S.query} within 0.5 s")
    assert got[0].message.endswith(": start the retriever")
    await arrived(seen)
    assert [c.request_id for c in seen] == [request.request_id]


async def test_an_acknowledged_request_waits_for_its_events_past_accept_within(
    settings: Settings, nc: NATS,
) -> None:
    """The endpoint declares ``accept=True``: its ``Accepted`` comes before the first
    event, so a slow first token is not mistaken for nobody taking the request."""
    async with running(Echo(settings)):
        request = StreamPing(tokens=2, delay_s=1.5, reply_to=nc.new_inbox(),
                             deadline=deadline_after(30))
        async with Client(nc, S).open_stream(ACCEPTED, request, accept_within=0.5) as events:
            got = [e async for e in events]
            accepted = events.accepted
    assert [type(e) for e in got] == [Token, Token, Done]
    assert accepted


async def test_without_an_acknowledgement_the_first_event_must_come_within_accept_within(
    settings: Settings, nc: NATS,
) -> None:
    """The same slow stream from an endpoint that does not acknowledge: ``accept_within``
    is then a bound on its first event (which is why only ``ragbus ask`` and the bridge,
    talking to the retriever, pass it)."""
    async with running(Echo(settings)):
        request = StreamPing(tokens=2, delay_s=1.5, reply_to=nc.new_inbox(),
                             deadline=deadline_after(30))
        async with Client(nc, S).open_stream(STREAM, request, accept_within=0.5) as events:
            got = [e async for e in events]
    assert len(got) == 1
    assert isinstance(got[0], Failed)
    assert got[0].code == ErrorCode.UNAVAILABLE


async def test_with_no_retriever_a_query_is_unavailable_at_once_even_with_accept_within(
    nc: NATS,
) -> None:
    request = StreamPing(reply_to=nc.new_inbox(), deadline=deadline_after(60))
    async with Client(nc, S).open_stream(S.query, request, accept_within=30,
                                         hint="start the retriever") as events:
        got = [e async for e in events]
    assert len(got) == 1
    assert isinstance(got[0], Failed)
    assert got[0].code == ErrorCode.UNAVAILABLE
    assert got[0].message == f"no actor is serving {S.query}: start the retriever"
