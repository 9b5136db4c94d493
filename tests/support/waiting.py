"""Waiting on a condition that has no event to wait on, with a generous deadline."""

from __future__ import annotations

from collections.abc import Callable

import anyio


async def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll ``predicate`` (the disk, another process, an actor's counters) until it holds;
    TimeoutError after ``timeout`` s. Tests assert outcomes, so the deadline is generous."""
    with anyio.fail_after(timeout):
        while True:
            if predicate():
                return
            await anyio.sleep(0.02)
