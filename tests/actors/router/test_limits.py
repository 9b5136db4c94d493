"""A provider's rate limit, split among the router replicas that are running."""

from __future__ import annotations

from collections.abc import Callable

import anyio

from ragbus.actors.router import Router
from ragbus.actors.router._limits import RateLimits
from ragbus.config import Settings
from tests.actors.router._fixtures import extractive, openai, with_router
from tests.support import running


async def taken(limits: RateLimits, provider: str) -> int:
    """How many requests the bucket lets through at once before it refuses."""
    n = 0
    while n < 1000 and await limits.try_acquire(provider):
        n += 1
    return n


async def test_each_replica_takes_its_share_of_the_providers_limit() -> None:
    limits = RateLimits({"groq": 30, "ollama": None})
    assert await taken(limits, "groq") == 30
    assert limits.share(3)
    assert not limits.share(3)  # unchanged
    assert limits.per_minute("groq") == 10
    assert await taken(limits, "groq") == 10
    assert limits.per_minute("ollama") is None
    assert limits.has_capacity("ollama")
    assert limits.share(0)  # never below one
    assert limits.replicas == 1


async def test_a_share_under_one_a_minute_still_lets_a_request_through_now_and_then() -> None:
    limits = RateLimits({"tiny": 1})
    limits.share(4)  # a quarter of a request a minute: one every four minutes
    assert await limits.try_acquire("tiny")
    assert not await limits.try_acquire("tiny")


async def _until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        for _ in range(int(timeout / 0.02) + 1):
            if check():
                return
            await anyio.sleep(0.02)
    raise AssertionError(f"not true within {timeout} s")


async def test_running_replicas_split_the_limit_and_a_stopped_one_gives_its_share_back(
    settings: Settings,
) -> None:
    s = with_router(settings, [openai("groq", "http://127.0.0.1:9/v1", rate_limit_per_minute=60),
                               extractive()], rate_limit_recount_s=0.05)
    async with running(Router(s)) as (first,):
        async with running(Router(s)) as (second,):
            await _until(lambda: first.limits.replicas == second.limits.replicas == 2)
            assert first.limits.per_minute("groq") == second.limits.per_minute("groq") == 30
        await _until(lambda: first.limits.replicas == 1)
        assert first.limits.per_minute("groq") == 60
