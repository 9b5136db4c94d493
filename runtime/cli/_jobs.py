"""Submitting ingest jobs and following their progress, for the CLI and any Python client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import KeyNotFoundError

from ragbus.subjects import JobProgress, Subjects, jobs_bucket, now_ms

from ..ingest import submit_job
from ..jetstream import ensure_kv

__all__ = ("follow_job", "submit_job")


async def follow_job(nc: NATS, job_id: str, subjects: Subjects | None = None, *,
                     timeout_s: float = 3600.0, poll_s: float = 1.0) -> AsyncIterator[JobProgress]:
    """Yield the job's progress until it has finished (or ``timeout_s`` passes).

    Events come from the progress subject; the jobs bucket is read too, so a job
    that finished before we subscribed, or an event lost in a reconnect, cannot
    leave the caller waiting.
    """
    s = subjects or Subjects()
    kv = await ensure_kv(nc, jobs_bucket(s))
    sub = await nc.subscribe(s.ingest_progress(job_id))
    decoder = msgspec.json.Decoder(JobProgress)
    give_up = now_ms() + int(timeout_s * 1000)
    try:
        while now_ms() < give_up:
            try:
                msg = await sub.next_msg(timeout=poll_s)
                progress = decoder.decode(msg.data)
            except NatsTimeout:
                try:
                    entry = await kv.get(job_id)
                except KeyNotFoundError:
                    continue
                if not entry.value:
                    continue
                progress = decoder.decode(entry.value)
            yield progress
            if progress.finished:
                return
        raise TimeoutError(f"job {job_id} did not finish within {timeout_s:.0f}s")
    finally:
        await sub.unsubscribe()
