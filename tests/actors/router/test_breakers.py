"""Circuit breakers shared by router replicas over the bus and the KV bucket."""

from __future__ import annotations

import anyio

from ragbus.actors.router import Router
from ragbus.config import Settings
from ragbus.runtime import codec
from ragbus.runtime.cli._status import breaker_states
from ragbus.runtime.connection import NATS
from ragbus.subjects import BreakerState, BreakerTransition, Done, Subjects, now_ms
from tests.actors.router._fixtures import ask, extractive, generate, openai, with_router
from tests.support import running
from tests.support.fake_openai import Behaviour, FakeOpenAI

OPEN, HALF_OPEN, CLOSED = BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED


async def answered_by(nc: NATS) -> str | None:
    done = (await ask(nc, generate(nc)))[-1]
    assert isinstance(done, Done), done
    return done.provider


async def test_a_429_on_one_replica_opens_every_replica_then_one_probe_closes_it(
    settings: Settings, nc: NATS
) -> None:
    heard = await nc.subscribe(Subjects().breaker("llm"))
    async with FakeOpenAI(Behaviour.counting(2)) as fake:
        fake.script(Behaviour.rate_limited(retry_after="1"))
        s = with_router(settings, [openai("llm", fake.base_url), extractive()])
        async with running(Router(s), Router(s)) as (a, b):
            assert await answered_by(nc) == "extractive"  # the 429 fell back
            with anyio.fail_after(1):
                await a.breakers.wait_for("llm", OPEN)
                await b.breakers.wait_for("llm", OPEN)
            opened = codec.decode((await heard.next_msg(1)).data, BreakerTransition)
            assert opened.reason == "rate_limited"
            assert opened.until is not None
            assert 800 <= opened.until - opened.at <= 1000  # Retry-After: 1

            for _ in range(4):  # while open, neither replica calls the provider
                assert await answered_by(nc) == "extractive"
            assert len(fake.chat_requests) == 1

            await anyio.sleep(max(0.0, (opened.until - now_ms()) / 1000) + 0.05)
            assert await answered_by(nc) == "llm"  # the probe, answered
            with anyio.fail_after(1):
                await a.breakers.wait_for("llm", CLOSED)
                await b.breakers.wait_for("llm", CLOSED)
            assert await answered_by(nc) == "llm"
    probe = codec.decode((await heard.next_msg(1)).data, BreakerTransition)
    closed = codec.decode((await heard.next_msg(1)).data, BreakerTransition)
    assert (probe.state, probe.reason) == (HALF_OPEN, "probe")
    assert (closed.state, closed.reason) == (CLOSED, "probe_succeeded")
    assert probe.revision < closed.revision
    assert len(fake.chat_requests) == 3


async def test_a_replica_that_starts_late_reads_the_open_breaker_from_the_bucket(
    settings: Settings, nc: NATS
) -> None:
    async with FakeOpenAI(Behaviour.rate_limited(retry_after="60")) as fake:
        s = with_router(settings, [openai("llm", fake.base_url), extractive()])
        async with running(Router(s)) as (first,):
            await answered_by(nc)
            assert first.breakers.state("llm") == OPEN
        async with running(Router(s)) as (late,):
            assert late.breakers.state("llm") == OPEN
            assert await answered_by(nc) == "extractive"
        stored = await breaker_states(nc, Subjects())
    assert len(fake.chat_requests) == 1
    assert [(t.provider, t.state, t.reason) for t in stored] == [("llm", OPEN, "rate_limited")]


async def test_consecutive_failures_open_the_breaker_for_the_failure_cooldown(
    settings: Settings, nc: NATS
) -> None:
    async with FakeOpenAI(Behaviour.server_error()) as fake:
        s = with_router(settings, [openai("llm", fake.base_url), extractive()],
                        breaker_failure_threshold=3, breaker_failure_cooldown_s=120)
        async with running(Router(s)) as (router,):
            for _ in range(2):
                await answered_by(nc)
            assert router.breakers.state("llm") == CLOSED
            await answered_by(nc)
            assert router.breakers.state("llm") == OPEN
            await answered_by(nc)
        stored = (await breaker_states(nc, Subjects()))[0]
    assert len(fake.chat_requests) == 3
    assert stored.reason == "failures"
    assert stored.failures == 3
    assert stored.until is not None
    assert 119_000 <= stored.until - stored.at <= 120_000
    assert "HTTP 500" in stored.message


async def test_half_open_lets_exactly_one_probe_through_across_replicas(
    settings: Settings, nc: NATS
) -> None:
    slow = Behaviour(tokens=("ok",), first_token_delay_s=0.4)
    async with FakeOpenAI(slow) as fake:
        fake.script(Behaviour.rate_limited(retry_after="1"))
        s = with_router(settings, [openai("llm", fake.base_url), extractive()])
        async with running(Router(s), Router(s)) as (a, b):
            await answered_by(nc)
            with anyio.fail_after(1):
                await a.breakers.wait_for("llm", OPEN)
                await b.breakers.wait_for("llm", OPEN)
            await anyio.sleep(1.1)
            providers: list[str | None] = []

            async def one() -> None:
                providers.append(await answered_by(nc))

            async with anyio.create_task_group() as tg:
                for _ in range(6):
                    tg.start_soon(one)
    assert sorted(p or "" for p in providers) == ["extractive"] * 5 + ["llm"]
    assert len(fake.chat_requests) == 2  # the 429, then the one probe


async def test_a_failed_probe_opens_the_breaker_again(settings: Settings, nc: NATS) -> None:
    async with FakeOpenAI(Behaviour.server_error()) as fake:
        fake.script(Behaviour.rate_limited(retry_after="1"))
        s = with_router(settings, [openai("llm", fake.base_url), extractive()],
                        breaker_failure_cooldown_s=90)
        async with running(Router(s)) as (router,):
            await answered_by(nc)
            await anyio.sleep(1.1)
            await answered_by(nc)  # the probe gets a 500
            stored = (await breaker_states(nc, Subjects()))[0]
            assert router.breakers.state("llm") == OPEN
    assert stored.reason == "probe_failed"
    assert stored.until is not None
    assert stored.until - stored.at >= 89_000
