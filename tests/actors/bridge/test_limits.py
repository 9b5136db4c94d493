"""Rate limits per client identity: asks per minute, asks at once, the numbers they report."""

from __future__ import annotations

import json
import math
import os
import signal

import anyio
import pytest

from ragbus.actors.bridge import FIRST_ASK_ESTIMATE_S, Bridge, Denied, LimitState, RateLimits
from ragbus.runtime import ensure_kv
from ragbus.runtime.cli import EmbeddedNats
from ragbus.runtime.connection import NATS
from ragbus.subjects import AuditOutcome, Subjects, limits_bucket
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
    wait_released,
    watch_audit,
)

KEY = {"X-API-Key": API_KEY}


async def shared(nc: NATS, per_minute: int, concurrent: int, **options: float) -> RateLimits:
    """Limits in the bucket every bridge replica uses."""
    kv = await ensure_kv(nc, limits_bucket(Subjects()))
    return RateLimits(kv, per_minute, concurrent, **options)


async def test_each_ask_uses_one_of_the_per_minute_limit_and_the_next_comes_back_in_time(
    nc: NATS,
) -> None:
    limits = await shared(nc, per_minute=3, concurrent=10)
    states = [await limits.admit("alice", f"a{i}") for i in range(3)]
    for i, state in enumerate(states):
        assert isinstance(state, LimitState)
        limits.end("alice", f"a{i}")
    assert [s.remaining for s in states] == [2, 1, 0]  # type: ignore[union-attr]
    refused = await limits.admit("alice", "a3")
    assert isinstance(refused, Denied)
    assert refused.scope == "per_minute"
    # three per minute drain one every 20 s: the next ask is possible in ~20 s
    assert 19 < refused.state.reset_in_seconds <= 20
    assert refused.retry_after_s == math.ceil(refused.state.reset_in_seconds) == 20
    assert (refused.state.limit, refused.state.remaining) == (3, 0)
    # other identities have limits of their own
    assert isinstance(await limits.admit("bob", "b0"), LimitState)


async def test_an_unused_limit_is_full_and_resets_in_no_time(nc: NATS) -> None:
    state = await (await shared(nc, per_minute=30, concurrent=2)).state("new")
    assert (state.limit, state.remaining, state.reset_in_seconds) == (30, 30, 0.0)
    assert (state.concurrent_limit, state.in_flight) == (2, 0)


async def test_the_concurrent_limit_counts_asks_until_they_are_released(nc: NATS) -> None:
    limits = await shared(nc, per_minute=100, concurrent=2)
    assert isinstance(await limits.admit("alice", "a0"), LimitState)
    assert isinstance(await limits.admit("alice", "a1"), LimitState)
    refused = await limits.admit("alice", "a2")
    assert isinstance(refused, Denied)
    assert refused.scope == "concurrent"
    assert refused.retry_after_s is None
    assert refused.retry_estimate_s == FIRST_ASK_ESTIMATE_S  # no ask has ended yet
    assert refused.state.remaining == 98  # a refused ask costs nothing
    limits.end("alice", "a0", took_s=0.5)
    assert isinstance(await limits.admit("alice", "a3"), LimitState)
    again = await limits.admit("alice", "a4")
    assert isinstance(again, Denied)
    # the estimate follows how long asks take: 2.0 moved a fifth of the way to 0.5
    assert again.retry_estimate_s == pytest.approx(1.7)


async def test_an_ended_ask_frees_its_place_for_other_replicas_once_flushed(
    nc: NATS,
) -> None:
    here = await shared(nc, per_minute=100, concurrent=1)
    there = await shared(nc, per_minute=100, concurrent=1)  # another replica
    assert isinstance(await here.admit("alice", "a0"), LimitState)
    assert isinstance(await there.admit("alice", "b0"), Denied)
    here.end("alice", "a0")
    assert (await here.state("alice")).in_flight == 0  # free here at once
    assert (await there.state("alice")).in_flight == 1  # not yet written back
    await here.flush("alice")
    assert isinstance(await there.admit("alice", "b0"), LimitState)
    assert (await here.state("alice")).remaining == 98  # one quota: two asks taken


async def test_the_place_of_an_ask_never_released_ends_with_its_lease(nc: NATS) -> None:
    """A bridge that died with asks in flight does not hold their places for ever."""
    limits = await shared(nc, per_minute=100, concurrent=1, lease_s=0.5)
    assert isinstance(await limits.admit("alice", "lost"), LimitState)  # never released
    assert isinstance(await limits.admit("alice", "next"), Denied)
    await anyio.sleep(0.6)
    assert isinstance(await limits.admit("alice", "next"), LimitState)


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
    nc: NATS, per_minute: int,
) -> None:
    limits = await shared(nc, per_minute=per_minute, concurrent=per_minute)
    drip = 60 / per_minute
    for taken in range(1, per_minute + 1):
        state = await limits.admit("x", f"x{taken}")
        assert isinstance(state, LimitState)
        assert state.remaining == per_minute - taken
        assert 0 < state.reset_in_seconds <= drip


async def test_two_bridges_share_one_identitys_limits(nats_url: str) -> None:
    """``--replicas 2`` must not double anyone's quota: both replicas count in one store."""
    settings = make_settings(nats_url, environment="production", asks_per_minute=3,
                             concurrent_asks=1)
    async with running(standin := QueryStandIn(settings), one := Bridge(settings),
                       two := Bridge(settings)) as _, \
            open_ws(one, headers=KEY) as a, open_ws(two, headers=KEY) as b:
        identity = (await recv(a))["identity"]
        assert (await recv(b))["identity"] == identity
        await ask(a, "slow", "tokens=30 pace=0.02")
        assert (await recv(a))["id"] == "slow"  # admitted: its first frame is here
        await ask(b, "meanwhile", "tokens=1")
        (at_once,) = await frames_until_end(b, "meanwhile")
        assert (await frames_until_end(a, "slow"))[-1]["type"] == "done"
        # an ended ask's place is written back a moment after its last frame: wait
        # until the other bridge sees it
        await wait_released(two, identity)
        await ask(b, "second", "tokens=1")
        assert (await frames_until_end(b, "second"))[-1]["type"] == "done"
        await wait_released(one, identity)
        await ask(a, "third", "tokens=1")
        assert (await frames_until_end(a, "third"))[-1]["type"] == "done"
        await wait_released(two, identity)
        await ask(b, "fourth", "tokens=1")
        (over_b,) = await frames_until_end(b, "fourth")
        await ask(a, "fifth", "tokens=1")
        (over_a,) = await frames_until_end(a, "fifth")
    assert at_once["code"] == "RATE_LIMIT"
    assert at_once["details"]["scope"] == "concurrent"
    for refused in (over_a, over_b):
        assert refused["code"] == "RATE_LIMIT"
        assert refused["details"]["scope"] == "per_minute"
        assert refused["details"]["limit"] == 3
    assert len(standin.received) == 3  # one quota of three, across both bridges


async def test_a_bridge_that_cannot_reach_its_limits_refuses_asks_unavailable(
    nats_server: EmbeddedNats,
) -> None:
    """Fail closed: with the bus not answering, nobody's limits are known, so no ask goes
    out and the socket says why within ``limits_wait_s``."""
    settings = make_settings(nats_server.url, limits_wait_s=1.0)
    async with running(standin := QueryStandIn(settings), bridge := Bridge(settings)), \
            open_ws(bridge) as ws:
        await recv(ws)
        await ask(ws, "before", "tokens=1")
        assert (await frames_until_end(ws, "before"))[-1]["type"] == "done"
        assert nats_server.pid is not None
        os.kill(nats_server.pid, signal.SIGSTOP)  # the server stops answering
        try:
            await ask(ws, "after", "tokens=1")
            (refused,) = await frames_until_end(ws, "after")
            await ws.send(json.dumps({"type": "status"}))
            status = await recv(ws)
        finally:
            os.kill(nats_server.pid, signal.SIGCONT)
    assert refused["type"] == "error"
    assert refused["code"] == "UNAVAILABLE"
    assert "rate limits" in refused["message"]
    assert status["code"] == "UNAVAILABLE"
    assert len(standin.received) == 1  # the refused ask never reached the bus
