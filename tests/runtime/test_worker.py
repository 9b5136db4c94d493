"""WorkerThread: blocking work off the loop, optionally at a lower CPU priority."""

from __future__ import annotations

import os
import threading

import pytest

from ragbus.runtime.worker import WorkerThread

pytestmark = pytest.mark.skipif(not hasattr(os, "getpriority"), reason="POSIX priorities")


def _nice_of(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


async def test_a_nice_worker_and_the_threads_it_starts_run_at_lower_priority() -> None:
    base = _nice_of(threading.get_native_id())
    worker = WorkerThread("test-nice", nice=7)

    def own_and_childs() -> tuple[int, int]:
        # onnxruntime starts its pool threads from the thread that loads the model:
        # they must inherit the worker's priority
        seen: list[int] = []
        child = threading.Thread(target=lambda: seen.append(_nice_of(threading.get_native_id())))
        child.start()
        child.join()
        return _nice_of(threading.get_native_id()), seen[0]

    try:
        own, childs = await worker.run(own_and_childs)
    finally:
        worker.close()
    assert own == min(base + 7, 19)
    assert childs == own
    assert _nice_of(threading.get_native_id()) == base  # the caller's thread is untouched


async def test_by_default_a_worker_keeps_the_callers_priority() -> None:
    worker = WorkerThread("test-plain")
    try:
        nice = await worker.run(lambda: _nice_of(threading.get_native_id()))
    finally:
        worker.close()
    assert nice == _nice_of(threading.get_native_id())


def test_an_out_of_range_nice_is_refused() -> None:
    with pytest.raises(ValueError, match="0-19"):
        WorkerThread("bad", nice=20)
