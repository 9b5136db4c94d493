"""Durable endpoints: one message lifecycle, with a JetStream acknowledgement as the reply.

A real nats-server with a real work-queue stream. Each job says what its handler
should do; the tests read what JetStream did with the message (acked, redelivered,
terminated) and what the actor recorded through ``job_failed``.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import anyio
import msgspec
from nats.js.api import RetentionPolicy, StreamConfig

from ragbus.config import Settings
from ragbus.runtime import (
    Actor,
    BadRequestError,
    Context,
    Durable,
    RagbusError,
    UnavailableError,
    endpoint,
    ensure_stream,
)
from ragbus.runtime.connection import NATS
from ragbus.subjects import ErrorCode, Message, Request, Subjects
from tests.support import running

S = Subjects()
SUBJECT = f"{S.prefix}.test.jobs"
STREAM = "RAG_TEST_JOBS"


class Job(Request, frozen=True, kw_only=True):
    key: str
    fail: str | None = None  # "unavailable" | "crash" | "bad_request"
    fail_times: int = 1_000_000  # fail on the first N deliveries only
    sleep_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Failure:
    key: str
    code: ErrorCode
    attempt: int
    retrying: bool


class Worker(Actor):
    """Does what each job says; records successes and failures."""

    name = "worker"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.done: list[tuple[str, int]] = []
        self.failures: list[Failure] = []
        self.started = anyio.Event()

    def _queue(self) -> Durable:
        return Durable("worker", stream=lambda s: STREAM, ack_wait_s=5, max_deliver=3,
                       concurrency=2, timeout_s=30)

    @endpoint(lambda s: SUBJECT, request=Job, durable=_queue)
    async def work(self, request: Job, ctx: Context) -> None:
        ctx.state = request.key
        self.started.set()
        if request.sleep_s:
            await anyio.sleep(request.sleep_s)
        if request.fail and ctx.attempt <= request.fail_times:
            if request.fail == "unavailable":
                raise UnavailableError("the embedder is not there")
            if request.fail == "bad_request":
                raise BadRequestError("this job can never work")
            raise KeyError("a bug in a reader")
        self.done.append((request.key, ctx.attempt))

    async def job_failed(self, request: Message, ctx: Context, error: RagbusError, *,
                         retrying: bool) -> None:
        assert isinstance(request, Job)
        self.failures.append(Failure(request.key, error.code, ctx.attempt, retrying))


async def queue(nc: NATS) -> None:
    await ensure_stream(nc, StreamConfig(name=STREAM, subjects=[SUBJECT],
                                         retention=RetentionPolicy.WORK_QUEUE))


async def submit(nc: NATS, job: Job) -> None:
    await nc.jetstream().publish(SUBJECT, msgspec.json.encode(job))


async def pending(nc: NATS) -> int:
    """Messages still in the work queue (a work queue deletes what was acked or termed)."""
    return (await nc.jetstream().stream_info(STREAM)).state.messages


async def until(predicate: object, timeout: float = 20) -> None:
    with anyio.fail_after(timeout):
        while not predicate():  # type: ignore[operator]  # noqa: ASYNC110
            await anyio.sleep(0.02)


async def test_a_finished_job_is_acknowledged(settings: Settings, nc: NATS) -> None:
    await queue(nc)
    async with running(Worker(settings)) as (worker,):
        await submit(nc, Job(key="a"))
        await until(lambda: worker.done)
        await until_empty(nc)
    assert worker.done == [("a", 1)]
    assert worker.failures == []


async def until_empty(nc: NATS) -> None:
    with anyio.fail_after(10):
        while await pending(nc):  # noqa: ASYNC110 - the server's state, polled
            await anyio.sleep(0.05)


async def test_a_peer_unavailable_is_retried_with_backoff_then_succeeds(
    settings: Settings, nc: NATS,
) -> None:
    await queue(nc)
    async with running(Worker(settings)) as (worker,):
        await submit(nc, Job(key="b", fail="unavailable", fail_times=1))
        await until(lambda: worker.done, timeout=30)  # after a 2 s backoff
        await until_empty(nc)
    assert worker.done == [("b", 2)]
    assert worker.failures == [Failure("b", ErrorCode.UNAVAILABLE, 1, True)]


async def test_after_the_last_delivery_the_failure_is_final(settings: Settings,
                                                           nc: NATS) -> None:
    await queue(nc)
    settings = msgspec.structs.replace(settings, runtime=msgspec.structs.replace(
        settings.runtime, default_timeout_s=60))
    async with running(Worker(settings)) as (worker,):
        await submit(nc, Job(key="c", fail="unavailable"))
        await until(lambda: len(worker.failures) == 3, timeout=40)  # 2 s + 4 s backoff
        await until_empty(nc)
    assert [(f.attempt, f.retrying) for f in worker.failures] == [(1, True), (2, True),
                                                                   (3, False)]
    assert worker.done == []


async def test_an_unexpected_error_fails_that_job_and_the_actor_keeps_serving(
    settings: Settings, nc: NATS,
) -> None:
    await queue(nc)
    async with running(Worker(settings)) as (worker,):
        await submit(nc, Job(key="bug", fail="crash"))
        await submit(nc, Job(key="bad", fail="bad_request"))
        await until(lambda: len(worker.failures) == 2)
        await submit(nc, Job(key="after"))
        await until(lambda: worker.done)
        await until_empty(nc)
    assert sorted((f.key, f.code, f.retrying) for f in worker.failures) == [
        ("bad", ErrorCode.BAD_REQUEST, False), ("bug", ErrorCode.INTERNAL, False)]
    assert worker.done == [("after", 1)]


async def test_a_cancel_by_its_request_id_ends_the_job_as_cancelled(
    settings: Settings, nc: NATS,
) -> None:
    await queue(nc)
    async with running(Worker(settings)) as (worker,):
        job = Job(key="slow", sleep_s=30)
        await submit(nc, job)
        await worker.started.wait()
        await nc.publish(S.cancel(job.request_id), b'{"reason": "changed my mind"}')
        await until(lambda: worker.failures)
        await until_empty(nc)
    assert worker.failures == [Failure("slow", ErrorCode.CANCELLED, 1, False)]


async def test_a_stopping_worker_hands_its_job_to_another(settings: Settings,
                                                          nc: NATS) -> None:
    await queue(nc)
    drain = msgspec.structs.replace(settings, runtime=msgspec.structs.replace(
        settings.runtime, drain_grace_s=0.2))
    first = Worker(drain)
    async with running(first):
        await submit(nc, Job(key="long", sleep_s=3))
        await first.started.wait()
    # the first one stopped mid-job: no failure recorded, the job went back at once
    assert first.failures == []
    assert first.done == []
    async with running(Worker(settings)) as (second,):
        await until(lambda: second.done)
    assert second.done == [("long", 2)]


class Fragile(Worker):
    """A worker whose jobs outlive the processes that take them (killed in the test)."""

    name = "fragile"

    def _queue(self) -> Durable:
        return Durable("fragile", stream=lambda s: STREAM, ack_wait_s=1, max_deliver=2)

    @endpoint(lambda s: f"{s.prefix}.test.fragile", request=Job, durable=_queue)
    async def work(self, request: Job, ctx: Context) -> None:
        ctx.state = request.key
        await anyio.sleep(request.sleep_s)


FRAGILE = f"{S.prefix}.test.fragile"
REPO = Path(__file__).resolve().parents[2]
PROCESS = """
import sys, anyio
from ragbus.config import NatsSettings, Settings
from tests.runtime.test_durable import Fragile
anyio.run(Fragile(Settings(nats=NatsSettings(url=sys.argv[1]))).serve)
"""


async def test_a_job_whose_every_taker_died_is_recorded_failed_and_removed(
    settings: Settings, nc: NATS, nats_url: str,
) -> None:
    """Killed mid-job on each of its max_deliver deliveries, a job used to vanish with
    its state stuck at running: JetStream stops delivering it and nobody says why."""
    await ensure_stream(nc, StreamConfig(name=STREAM, subjects=[SUBJECT, FRAGILE],
                                         retention=RetentionPolicy.WORK_QUEUE))
    js = nc.jetstream()
    job = Job(key="doomed", sleep_s=60)
    await js.publish(FRAGILE, msgspec.json.encode(job))
    for delivery in (1, 2):
        proc = await anyio.open_process([sys.executable, "-c", PROCESS, nats_url], cwd=REPO,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with anyio.fail_after(30):
                while True:  # taken: delivered this many times and not acknowledged
                    try:
                        info = await js.consumer_info(STREAM, "fragile")
                    except Exception:  # the process has not created it yet
                        info = None
                    if info is not None and info.num_ack_pending == 1 \
                            and info.delivered.consumer_seq == delivery:
                        break
                    await anyio.sleep(0.05)
        finally:
            proc.kill()  # -9: no drain, no nak, no record
            await proc.wait()
    async with running(Fragile(settings)) as (survivor,):
        await until(lambda: survivor.failures, timeout=20)
        await until_empty_of(nc, FRAGILE)
    (failure,) = survivor.failures
    assert failure.key == "doomed"
    assert (failure.code, failure.attempt, failure.retrying) == (ErrorCode.UNAVAILABLE, 2,
                                                                  False)
    assert survivor.done == []


async def until_empty_of(nc: NATS, subject: str) -> None:
    js = nc.jetstream()
    with anyio.fail_after(10):
        while (await js.stream_info(STREAM, subjects_filter=subject)).state.messages:  # noqa: ASYNC110
            await anyio.sleep(0.05)
