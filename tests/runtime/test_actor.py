"""The actor base: what every actor does with every message."""

from __future__ import annotations

import json

import anyio
import msgspec
import pytest

from ragbus.config import NatsSettings, RuntimeSettings, Settings
from ragbus.runtime import (
    AdaptiveLimit,
    BadRequestError,
    Client,
    Context,
    DeadlineExceededError,
    InternalError,
    OverloadedError,
    RequestCancelledError,
    TooLargeError,
    UnavailableError,
    UnsupportedVersionError,
    endpoint,
)
from ragbus.runtime.connection import NATS
from ragbus.subjects import ERROR_HEADER, Done, Failed, Subjects, Token, deadline_after, now_ms
from ragbus.subjects import Cancelled as CancelledEvent
from tests.support import Echo, Ping, Pong, StreamPing, running
from tests.support.echo import echo_subject, stream_subject
from tests.support.waiting import wait_for

ECHO = echo_subject(Subjects())
STREAM = stream_subject(Subjects())


async def test_a_request_gets_its_reply(settings: Settings, nc: NATS) -> None:
    async with running(Echo(settings)) as (echo,):
        pong = await Client(nc).request(ECHO, Ping(text="hello"), Pong)
    assert pong.text == "hello"
    assert pong.instance == echo.id


async def test_malformed_message_gets_bad_request_and_actor_keeps_serving(
    settings: Settings, nc: NATS
) -> None:
    async with running(Echo(settings)):
        for garbage in (b"not json", b'{"text": 42}', b"[1,2]", b""):
            reply = await nc.request(ECHO, garbage, timeout=2)
            assert reply.headers is not None
            assert reply.headers[ERROR_HEADER] == "BAD_REQUEST"
            body = json.loads(reply.data)
            assert body["code"] == "BAD_REQUEST"
            assert "Ping" in body["message"]
        pong = await Client(nc).request(ECHO, Ping(text="still here"), Pong)
    assert pong.text == "still here"


async def test_bad_message_with_reply_to_also_gets_a_failed_event(
    settings: Settings, nc: NATS
) -> None:
    sub = await nc.subscribe("inbox.bad")
    async with running(Echo(settings)):
        await nc.publish(STREAM, b'{"request_id": "r1", "reply_to": "inbox.bad", "tokens": "x"}')
        msg = await sub.next_msg(timeout=2)
    event = msgspec.json.decode(msg.data, type=Failed)
    assert event.request_id == "r1"
    assert event.code == "BAD_REQUEST"


async def test_a_request_id_or_reply_to_no_subject_can_carry_is_a_bad_request(
    settings: Settings, nc: NATS
) -> None:
    """Such a request could never be cancelled or answered: refused when read, rather
    than failing as INTERNAL when the handler first publishes to its ``reply_to``."""
    async with running(Echo(settings)) as (echo,):
        for body in (b'{"request_id": "a b", "reply_to": "inbox.ok"}',
                     b'{"request_id": "a.b", "reply_to": "inbox.ok"}',
                     b'{"reply_to": "inbox with spaces"}',
                     b'{"reply_to": "inbox.*"}',
                     b'{"reply_to": "inbox..x"}',
                     b'{"reply_to": ""}'):
            reply = await nc.request(STREAM, body, timeout=2)
            assert reply.headers is not None
            assert reply.headers[ERROR_HEADER] == "BAD_REQUEST", body
        internal = echo.metrics.registry.get_sample_value(
            "ragbus_errors_total", {"actor": "echo", "endpoint": "stream", "code": "INTERNAL"})
        assert not internal


async def test_a_guessable_request_id_is_refused_so_no_one_can_cancel_it_by_guessing(
    settings: Settings, nc: NATS
) -> None:
    async with running(Echo(settings)) as (echo,):
        reply = await nc.request(ECHO, b'{"request_id": "q1", "text": "hi"}', timeout=5)
        assert reply.headers is not None
        assert reply.headers[ERROR_HEADER] == "BAD_REQUEST"
        assert b"guessable" in reply.data
        assert echo.handled == 0


async def test_oversized_message_is_refused_with_too_large(nats_url: str, nc: NATS) -> None:
    settings = Settings(nats=NatsSettings(url=nats_url),
                        runtime=RuntimeSettings(max_message_bytes=1000))
    async with running(Echo(settings)):
        with pytest.raises(TooLargeError, match="limit is 1000"):
            await Client(nc).request(ECHO, Ping(text="x" * 2000), Pong)
        assert (await Client(nc).request(ECHO, Ping(text="small"), Pong)).text == "small"


async def test_handler_errors_keep_their_code(settings: Settings, nc: NATS) -> None:
    async with running(Echo(settings)):
        with pytest.raises(BadRequestError, match="you asked for it") as info:
            await Client(nc).request(ECHO, Ping(fail="bad_request"), Pong)
        assert info.value.details == {"field": "fail"}


async def test_a_coded_error_from_a_child_task_keeps_its_code(
    settings: Settings, nc: NATS
) -> None:
    async with running(Echo(settings)):
        with pytest.raises(BadRequestError, match="raised by a child task"):
            await Client(nc).request(ECHO, Ping(fail="group"), Pong)


async def test_unexpected_exception_is_internal_and_does_not_leak(
    settings: Settings, nc: NATS
) -> None:
    async with running(Echo(settings)):
        with pytest.raises(InternalError) as info:
            await Client(nc).request(ECHO, Ping(fail="crash"), Pong)
        assert "hunter2" not in info.value.message
        assert info.value.trace_id
        assert info.value.trace_id in info.value.message
        assert (await Client(nc).request(ECHO, Ping(text="ok"), Pong)).text == "ok"


async def test_newer_schema_version_is_refused(settings: Settings, nc: NATS) -> None:
    async with running(Echo(settings)):
        with pytest.raises(UnsupportedVersionError, match="upgrade"):
            await Client(nc).request(ECHO, Ping(v=99), Pong)


async def test_slow_requests_run_concurrently_up_to_the_limit(nats_url: str, nc: NATS) -> None:
    settings = Settings(nats=NatsSettings(url=nats_url),
                        runtime=RuntimeSettings(concurrency=4))
    client = Client(nc)
    async with running(Echo(settings)) as (echo,):
        results: list[Pong] = []

        async def one(i: int) -> None:
            results.append(await client.request(ECHO, Ping(text=str(i), sleep_s=0.2), Pong,
                                                timeout=10))

        async with anyio.create_task_group() as tg:
            for i in range(12):
                tg.start_soon(one, i)
    assert sorted(int(p.text) for p in results) == list(range(12))
    assert echo.max_active == 4  # concurrent, and never beyond the limit


async def test_over_capacity_a_request_is_refused_at_once_instead_of_queued(
    nats_url: str, nc: NATS
) -> None:
    """One slot, handlers of 0.4 s, at most 0.5 s of queueing: of five at once, one runs,
    one waits (0.4 s ahead of it), three are told OVERLOADED with a retry hint, and a
    stream request's refusal reaches its reply_to as a failed event."""
    settings = Settings(nats=NatsSettings(url=nats_url),
                        runtime=RuntimeSettings(concurrency=1, max_queue_wait_s=0.5))
    client = Client(nc)
    events = await nc.subscribe("inbox.shed")
    async with running(Echo(settings)):
        await client.request(ECHO, Ping(text="warm", sleep_s=0.4), Pong, timeout=10)
        answered: list[Pong] = []
        refused: list[OverloadedError] = []

        async def one(i: int) -> None:
            try:
                answered.append(await client.request(ECHO, Ping(text=str(i), sleep_s=0.4),
                                                     Pong, timeout=10))
            except OverloadedError as exc:
                refused.append(exc)

        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(one, i)
            await anyio.sleep(0.1)  # all five are in: one running, one queued
            await nc.publish(STREAM, msgspec.json.encode(StreamPing(
                request_id="shed-0123456789abcdef", reply_to="inbox.shed", tokens=1)))
            failed = msgspec.json.decode((await events.next_msg(timeout=5)).data)
    assert len(answered) == 2
    assert len(refused) == 3
    assert all(exc.details["retry_after_s"] > 0 for exc in refused)
    assert failed["type"] == "failed"
    assert failed["code"] == "OVERLOADED"
    assert failed["request_id"] == "shed-0123456789abcdef"


class Limited(Echo):
    """Echo whose ping endpoint is a first hop with an adaptive limit of exactly two."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.limit = AdaptiveLimit(0.05, minimum=2, maximum=2)

    @endpoint(lambda s: f"{s.prefix}.test.limited", request=Ping,
              limit=lambda actor: actor.limit)
    async def limited(self, request: Ping, ctx: Context) -> Pong:
        return await self.ping(request, ctx)


async def test_a_first_hop_over_its_adaptive_limit_refuses_at_once_with_a_retry_hint(
    nats_url: str, nc: NATS
) -> None:
    """Slots to spare, but two in flight is the limit: of five slow requests at once, two
    are answered and three refused with OVERLOADED; once they end there is room again."""
    settings = Settings(nats=NatsSettings(url=nats_url))
    client = Client(nc)
    subject = f"{Subjects().prefix}.test.limited"
    async with running(Limited(settings)) as (actor,):
        answered: list[Pong] = []
        refused: list[OverloadedError] = []

        async def one(i: int) -> None:
            try:
                answered.append(await client.request(subject, Ping(text=str(i), sleep_s=0.5),
                                                     Pong, timeout=10))
            except OverloadedError as exc:
                refused.append(exc)

        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(one, i)
        assert len(answered) == 2
        assert len(refused) == 3
        assert all("limit of 2" in exc.message for exc in refused)
        assert all(exc.details["retry_after_s"] >= 0.1 for exc in refused)
        assert actor.limit.inflight == 0
        again = await client.request(subject, Ping(text="again"), Pong, timeout=10)
    assert again.text == "again"


async def test_with_no_queue_limit_every_request_waits_its_turn(nats_url: str, nc: NATS) -> None:
    settings = Settings(nats=NatsSettings(url=nats_url),
                        runtime=RuntimeSettings(concurrency=1, max_queue_wait_s=None))
    client = Client(nc)
    async with running(Echo(settings)):
        await client.request(ECHO, Ping(text="warm", sleep_s=0.3), Pong, timeout=10)
        answered: list[Pong] = []

        async def one(i: int) -> None:
            answered.append(await client.request(ECHO, Ping(text=str(i), sleep_s=0.3), Pong,
                                                 timeout=10))

        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(one, i)
    assert sorted(int(p.text) for p in answered) == list(range(5))


async def test_cancel_stops_the_handler_and_requester_sees_cancelled(
    settings: Settings, nc: NATS
) -> None:
    client = Client(nc)
    request = Ping(text="slow", sleep_s=30)
    async with running(Echo(settings)) as (echo,):
        outcome: list[BaseException] = []

        async def ask() -> None:
            try:
                await client.request(ECHO, request, Pong, timeout=10)
            except RequestCancelledError as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask)
            await echo.started_work.wait()
            await client.cancel(request.request_id, reason="user pressed stop")
    assert len(outcome) == 1
    assert "user pressed stop" in str(outcome[0])
    assert echo.cancelled == [request.request_id]
    assert len(echo.inflight) == 0


async def test_a_cancel_goes_through_the_same_intake_as_a_request(
    nats_url: str, nc: NATS
) -> None:
    """An oversized, garbled or mislabelled cancel cancels nothing (the oversized one used
    to be read whole, past ``runtime.max_message_bytes``, and honoured)."""
    settings = Settings(nats=NatsSettings(url=nats_url),
                        runtime=RuntimeSettings(max_message_bytes=1000))
    client = Client(nc)
    target, marker = Ping(text="target", sleep_s=60), Ping(text="marker", sleep_s=60)
    subject = Subjects().cancel(target.request_id)
    outcome: dict[str, str] = {}
    async with running(Echo(settings)) as (echo,):

        async def ask(request: Ping) -> None:
            try:
                await client.request(ECHO, request, Pong, timeout=30)
            except RequestCancelledError as exc:
                outcome[request.text] = str(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask, target)
            tg.start_soon(ask, marker)
            await wait_for(lambda: echo.active == 2)
            await nc.publish(subject, msgspec.json.encode(
                {"request_id": target.request_id, "reason": "x" * 2000}))
            await nc.publish(subject, b'{"request_id": 7, "reason": "garbled"}')
            await nc.publish(subject, msgspec.json.encode(
                {"request_id": "someone-else", "reason": "mislabelled"}))
            # one connection, one cancel subscription: read after the three above
            await client.cancel(marker.request_id, reason="marker")
            await wait_for(lambda: "marker" in outcome)
            assert echo.cancelled == [marker.request_id]  # the target still runs
            await client.cancel(target.request_id, reason="user pressed stop")
    assert outcome == {"marker": "cancelled: marker", "target": "cancelled: user pressed stop"}
    assert echo.cancelled == [marker.request_id, target.request_id]


async def test_cancel_of_a_stream_sends_cancelled_with_progress(
    settings: Settings, nc: NATS
) -> None:
    client = Client(nc)
    request = StreamPing(reply_to=nc.new_inbox(), tokens=1000, sleep_s=0.01)
    events = []
    async with running(Echo(settings)):
        async for event in client.stream(STREAM, request, timeout=10):
            events.append(event)
            if isinstance(event, Token) and event.seq == 2:
                await client.cancel(request.request_id)
    last = events[-1]
    assert isinstance(last, CancelledEvent)
    assert last.tokens_used >= 3
    assert last.partial_text_length == 3 * last.tokens_used
    assert [e.seq for e in events if isinstance(e, Token)] == list(range(len(events) - 1))


async def test_stream_failure_becomes_a_failed_event(settings: Settings, nc: NATS) -> None:
    request = StreamPing(reply_to=nc.new_inbox(), tokens=5, fail_after=2)
    async with running(Echo(settings)):
        events = [e async for e in Client(nc).stream(STREAM, request)]
    assert [type(e) for e in events] == [Token, Token, Failed]
    failed = events[-1]
    assert isinstance(failed, Failed)
    assert failed.code == "BAD_REQUEST"
    assert failed.trace_id


async def test_a_stream_ends_with_done(settings: Settings, nc: NATS) -> None:
    request = StreamPing(reply_to=nc.new_inbox(), tokens=3)
    async with running(Echo(settings)):
        events = [e async for e in Client(nc).stream(STREAM, request)]
    assert [type(e) for e in events] == [Token, Token, Token, Done]


async def test_expired_deadline_is_dropped_without_running_the_handler(
    settings: Settings, nc: NATS
) -> None:
    async with running(Echo(settings)) as (echo,):
        with pytest.raises(DeadlineExceededError, match="had passed"):
            await Client(nc).request(ECHO, Ping(deadline=now_ms() - 1), Pong)
    assert echo.handled == 0
    assert echo.max_active == 0


async def test_handler_running_past_its_deadline_is_stopped(
    settings: Settings, nc: NATS
) -> None:
    async with running(Echo(settings)) as (echo,):
        with pytest.raises(DeadlineExceededError, match="while the request was handled"):
            await Client(nc).request(ECHO, Ping(sleep_s=30, deadline=deadline_after(0.3)), Pong)
    assert echo.handled == 0


async def test_request_without_deadline_gets_the_default(nats_url: str, nc: NATS) -> None:
    settings = Settings(nats=NatsSettings(url=nats_url),
                        runtime=RuntimeSettings(default_timeout_s=0.3))
    async with running(Echo(settings)):
        # published raw: no deadline in the message at all
        reply = await nc.request(ECHO, b'{"sleep_s": 30}', timeout=5)
    assert json.loads(reply.data)["code"] == "DEADLINE_EXCEEDED"


async def test_drain_finishes_in_flight_work(settings: Settings, nc: NATS) -> None:
    client = Client(nc)
    echo = Echo(settings)
    results: list[Pong] = []
    async with anyio.create_task_group() as tg:
        await tg.start(echo.serve)

        async def ask() -> None:
            results.append(await client.request(ECHO, Ping(text="finish me", sleep_s=0.3), Pong))

        tg.start_soon(ask)
        await echo.started_work.wait()
        echo.request_stop()
    assert [p.text for p in results] == ["finish me"]
    with pytest.raises(UnavailableError):
        await client.request(ECHO, Ping(), Pong, timeout=1)


async def test_drain_cancels_work_that_outlives_the_grace_period(
    nats_url: str, nc: NATS
) -> None:
    settings = Settings(nats=NatsSettings(url=nats_url),
                        runtime=RuntimeSettings(drain_grace_s=0.2))
    client = Client(nc)
    echo = Echo(settings)
    errors: list[Exception] = []
    async with anyio.create_task_group() as tg:
        await tg.start(echo.serve)

        async def ask() -> None:
            try:
                await client.request(ECHO, Ping(sleep_s=30), Pong, timeout=10)
            except UnavailableError as exc:
                errors.append(exc)

        tg.start_soon(ask)
        await echo.started_work.wait()
        echo.request_stop()
    assert len(errors) == 1
    assert "stopped before finishing" in str(errors[0])


async def test_two_replicas_share_a_queue_group(settings: Settings, nc: NATS) -> None:
    client = Client(nc)
    async with running(Echo(settings), Echo(settings)) as (a, b):
        pongs: list[Pong] = []

        async def ask(i: int) -> None:
            pongs.append(await client.request(ECHO, Ping(text=str(i), sleep_s=0.02), Pong))

        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(ask, i)
    by_instance = {p.instance for p in pongs}
    assert len(pongs) == 40
    assert by_instance == {a.id, b.id}  # both served
    assert a.handled + b.handled == 40  # and each request was handled exactly once


async def test_discovery_lists_the_actor_with_its_stats(settings: Settings, nc: NATS) -> None:
    from ragbus.runtime import discover

    async with running(Echo(settings)) as (echo,):
        await Client(nc).request(ECHO, Ping(), Pong)
        with pytest.raises(BadRequestError):
            await Client(nc).request(ECHO, Ping(fail="bad_request"), Pong)
        pings = await discover(nc, "PING", wait_s=0.3)
        stats = await discover(nc, "STATS", wait_s=0.3)
        infos = await discover(nc, "INFO", wait_s=0.3)
    assert [(p["name"], p["id"]) for p in pings] == [("echo", echo.id)]
    assert infos[0]["type"] == "io.nats.micro.v1.info_response"
    ep = {e["name"]: e for e in stats[0]["endpoints"]}["ping"]
    assert ep["subject"] == ECHO
    assert ep["queue_group"] == "echo"
    assert ep["num_requests"] == 2
    assert ep["num_errors"] == 1
    assert ep["last_error"] == "BAD_REQUEST"
