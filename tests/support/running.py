"""Run an actor for the length of a ``with`` block."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar

import anyio

from ragbus.runtime import Actor

A = TypeVar("A", bound=Actor)


@asynccontextmanager
async def running(*actors: A) -> AsyncIterator[tuple[A, ...]]:
    """Serve ``actors`` (subscribed and flushed on entry); drain them on exit."""
    async with anyio.create_task_group() as tg:
        for actor in actors:
            await tg.start(actor.serve)
        try:
            yield actors
        finally:
            for actor in actors:
                actor.request_stop()
