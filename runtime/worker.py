"""One dedicated thread for blocking work that must not run on the event loop.

Model inference and the embedded vector store hold the GIL or are not safe to
call from several threads at once; a single named thread runs them one at a time
while the loop keeps answering messages.

A worker may run at a lower CPU priority (``nice``): on Linux the nice value is
a property of each thread, and a thread inherits its creator's. So a model
loaded *on* a niced worker gets its onnxruntime pool threads niced too, and its
bulk work yields the CPU to everything else in the machine (a question's vector,
a search) whenever both want it, at no cost when nothing else does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

__all__ = ("WorkerThread",)

P = ParamSpec("P")
T = TypeVar("T")


class WorkerThread:
    def __init__(self, name: str, *, nice: int = 0) -> None:
        """``nice`` (0-19) is added to the thread's nice value when it starts, lowering
        its priority; raising it needs no privilege, lowering it again would."""
        if not 0 <= nice <= 19:
            raise ValueError(f"nice must be 0-19, not {nice}")
        self.nice = nice
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name,
                                        initializer=_lower_priority, initargs=(nice,))

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` on the thread. If the caller is cancelled the call still finishes
        (blocking code cannot be interrupted) but its result is dropped."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Run ``fn`` on the thread from code with no event loop (an actor's
        :meth:`~ragbus.runtime.Actor.prewarm`): its future."""
        return self._pool.submit(fn, *args, **kwargs)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _lower_priority(nice: int) -> None:
    if nice and hasattr(os, "setpriority"):
        tid = threading.get_native_id()
        # a sandbox may forbid it: the work still runs, at normal priority
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
