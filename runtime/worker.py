"""One dedicated thread for blocking work that must not run on the event loop.

Model inference and the embedded vector store hold the GIL or are not safe to
call from several threads at once; a single named thread runs them one at a time
while the loop keeps answering messages.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

__all__ = ("WorkerThread",)

P = ParamSpec("P")
T = TypeVar("T")


class WorkerThread:
    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` on the thread. If the caller is cancelled the call still finishes
        (blocking code cannot be interrupted) but its result is dropped."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
