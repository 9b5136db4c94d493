"""Rate limits per client identity: asks per minute, asks at once, the numbers they report."""

from __future__ import annotations

import json
import math

import anyio
import pytest

from ragbus.actors.bridge import FIRST_ASK_ESTIMATE_S, Bridge, Denied, LimitState, RateLimits
from ragbus.runtime.connection import NATS
from ragbus.subjects import AuditOutcome
from tests.support import running

from .standin import QueryStandIn
from .wsclient import (
    API_KEY,
    ask,
    frames_until_end,
    make_settings,
    next_audit,
    open_ws,
    recv,
    watch_audit,
)

KEY = {"X-API-Key": API_KEY}


async def test_each_ask_uses_one_of_the_per_minute_limit_and_the_next_comes_back_in_time(
) -> None:
    limits = RateLimits(per_minute=3, concurrent=10)
    states = [await limits.admit("alice") for _ in range(3)]
    for state in states:
        assert isinstance(state, LimitState)
        limits.release("alice")
    assert [s.remaining for s in states] == [2, 1, 0]  # type: ignore[union-attr]
    refused = await limits.admit("alice")
    assert isinstance(refused, Denied)
    assert refused.scope == "per_minute"
    # three per minute drain one every 20 s: the next ask is possible in ~20 s
    assert 19 < refused.state.reset_in_seconds <= 20
    assert refused.retry_after_s == math.ceil(refused.state.reset_in_seconds) == 20
    assert (refused.state.limit, refused.state.remaining) == (3, 0)
    # other identities have limits of their own
    assert isinstance(await limits.admit("bob"), LimitState)


async def test_an_unused_limit_is_full_and_resets_in_no_time() -> None:
    state = RateLimits(per_minute=30, concurrent=2).state("new")
    assert (state.limit, state.remaining, state.reset_in_seconds) == (30, 30, 0.0)
    assert (state.concurrent_limit, state.in_flight) == (2, 0)


async def test_the_concurrent_limit_counts_asks_until_they_are_released() -> None:
    limits = RateLimits(per_minute=100, concurrent=2)
    assert isinstance(await limits.admit("alice"), LimitState)
    assert isinstance(await limits.admit("alice"), LimitState)
    refused = await limits.admit("alice")
    assert isinstance(refused, Denied)
    assert refused.scope == "concurrent"
    assert refused.retry_after_s is None
    assert refused.retry_estimate_s == FIRST_ASK_ESTIMATE_S  # no ask has ended yet
    assert refused.state.remaining == 98  # a refused ask costs nothing
    limits.release("alice", took_s=0.5)
    assert isinstance(await limits.admit("alice"), LimitState)
    again = await limits.admit("alice")
    assert isinstance(again, Denied)
    # the estimate follows how long asks take: 2.0 moved a fifth of the way to 0.5
    assert again.retry_estimate_s == pytest.approx(1.7)


async def test_idle_identities_are_forgotten_when_there_are_too_many() -> None:
    limits = RateLimits(per_minute=10, concurrent=1, max_identities=3, period_s=0.03)
    busy = await limits.admit("busy")  # in flight: must be kept
    assert isinstance(busy, LimitState)
    for who in ("a", "b"):
        await limits.admit(who)
        limits.release(who)
    await anyio.sleep(0.05)  # their buckets have drained
    await limits.admit("newcomer")
    assert len(limits) == 2
    assert limits.state("busy").in_flight == 1


async def test_over_the_limit_an_ask_gets_the_rate_limit_frame_and_an_audit_event(
    nats_url: str, nc: NATS
) -> None:
    settings = make_settings(nats_url, environment="production", asks_per_minute=3)
    limited = await watch_audit(nc, "rate.limited")
    async with running(standin := QueryStandIn(settings), bridge := Bridge(settings)):
        async with open_ws(bridge, headers=KEY) as ws:
            ready = await recv(ws)
            for i in range(3):
                await ask(ws, f"ok{i}", "tokens=1")
                assert (await frames_until_end(ws, f"ok{i}"))[-1]["type"] == "done"
            await ask(ws, "over", "tokens=1")
            (refused,) = await frames_until_end(ws, "over")
            await ws.send(json.dumps({"type": "status"}))
            status = await recv(ws)
        # another socket of the same key shares the limit
        async with open_ws(bridge, query=f"?token={API_KEY}") as other:
            await recv(other)
            await ask(other, "again", "tokens=1")
            (refused_again,) = await frames_until_end(other, "again")
        event = await next_audit(limited)

    assert ready["limits"]["remaining"] == 3
    assert refused["type"] == "error"
    assert refused["code"] == "RATE_LIMIT"
    details = refused["details"]
    assert (details["limit"], details["remaining"], details["scope"]) == (3, 0, "per_minute")
    assert 19 < details["reset_in_seconds"] <= 20
    assert refused["message"] == (
        f"Rate limit exceeded. Retry after {math.ceil(details['reset_in_seconds'])} seconds.")
    assert refused["message"] == "Rate limit exceeded. Retry after 20 seconds."
    assert status["type"] == "status"
    assert (status["limit"], status["remaining"], status["in_flight"]) == (3, 0, 0)
    assert 18 < status["reset_in_seconds"] <= details["reset_in_seconds"]
    assert refused_again["code"] == "RATE_LIMIT"
    assert len(standin.received) == 3  # refused asks never reach the bus
    assert event.outcome == AuditOutcome.DENIED
    assert event.code == "RATE_LIMIT"
    assert event.subject == ready["identity"]
    assert event.details["limit"] == 3


async def test_over_the_concurrent_limit_an_ask_is_refused_until_one_finishes(
    nats_url: str,
) -> None:
    settings = make_settings(nats_url, concurrent_asks=1)
    async with running(QueryStandIn(settings), bridge := Bridge(settings)), \
            open_ws(bridge) as ws:
        await recv(ws)
        await ask(ws, "first", "tokens=30 pace=0.01")
        await ask(ws, "second", "tokens=1")
        (refused,) = await frames_until_end(ws, "second")
        first = await frames_until_end(ws, "first")
        await ask(ws, "third", "tokens=1")
        third = await frames_until_end(ws, "third")
    assert refused["code"] == "RATE_LIMIT"
    assert refused["details"]["scope"] == "concurrent"
    assert refused["details"]["limit"] == 1
    assert refused["details"]["reset_in_seconds"] > 0  # an estimate, never null
    assert "Retry when one has finished" in refused["message"]
    assert first[-1]["type"] == "done"
    assert third[-1]["type"] == "done"


@pytest.mark.parametrize("per_minute", [1, 7, 60])
async def test_remaining_never_exceeds_the_limit_and_reset_is_within_one_drip(
    per_minute: int,
) -> None:
    limits = RateLimits(per_minute=per_minute, concurrent=per_minute)
    drip = 60 / per_minute
    for taken in range(1, per_minute + 1):
        state = await limits.admit("x")
        assert isinstance(state, LimitState)
        assert state.remaining == per_minute - taken
        assert 0 < state.reset_in_seconds <= drip
