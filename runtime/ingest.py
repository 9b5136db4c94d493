"""Ingest jobs from anywhere: files into the uploads object store, jobs into the queue.

A client (``ragbus ingest``, the bridge's ``POST /upload``, any Python program) puts
each file into the ``rag_uploads`` object store under its SHA-256 and submits a job
naming the objects, so the ingestor never needs to see the client's disk. A file whose
digest is already stored is not sent again.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import KeyNotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from ragbus.subjects import (
    IngestRequest,
    JobProgress,
    JobState,
    Subjects,
    UploadedFile,
    ingest_stream,
    jobs_bucket,
    now_ms,
    uploads_bucket,
)

from .errors import TooLargeError
from .jetstream import (
    ensure_kv,
    ensure_object_store,
    ensure_stream,
    publish_once,
    through_elections,
)

__all__ = ("Upload", "follow_job", "job_exists", "open_uploads", "submit_job", "upload")


async def submit_job(nc: NATS, request: IngestRequest, subjects: Subjects | None = None, *,
                     replicas: int = 1, max_bytes: int | None = None) -> None:
    """Queue ``request`` durably. Submitting the same job id twice queues it once.

    The publish carries the job id as ``Nats-Msg-Id``, so it is retried while a cluster
    elects a new stream leader without ever being stored twice: JetStream drops a repeat
    within its duplicate window. A request over ``max_bytes`` (the ingestor's
    ``runtime.max_message_bytes``) raises ``TooLargeError`` instead of being queued to be
    refused.
    """
    s = subjects or Subjects()
    data = msgspec.json.encode(request)
    if max_bytes is not None and len(data) > max_bytes:
        files = len(request.uploads) + len(request.documents)
        raise TooLargeError(
            f"the job is {len(data):,} bytes ({files} files or documents), over the "
            f"{max_bytes:,}-byte message limit (runtime.max_message_bytes): ingest it in "
            "parts, e.g. folder by folder", details={"size": len(data), "limit": max_bytes})
    await ensure_stream(nc, ingest_stream(s), replicas=replicas)
    kv = await ensure_kv(nc, jobs_bucket(s), replicas=replicas)
    queued = JobProgress(job_id=request.job_id, state=JobState.QUEUED, submitted_at=now_ms(),
                         updated_at=now_ms(), message="waiting for an ingestor")
    await through_elections(lambda: kv.put(request.job_id, msgspec.json.encode(queued)))
    await publish_once(nc, s.ingest_submit, data, msg_id=request.job_id)


async def job_exists(nc: NATS, job_id: str, subjects: Subjects | None = None) -> bool:
    """Whether the jobs bucket knows ``job_id`` (jobs are kept 30 days)."""
    kv = await ensure_kv(nc, jobs_bucket(subjects or Subjects()))
    try:
        entry = await kv.get(job_id)
    except KeyNotFoundError:
        return False
    return bool(entry.value)


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


async def open_uploads(nc: NATS, subjects: Subjects | None = None, *,
                       replicas: int = 1) -> ObjectStore:
    """The uploads object store (created on first use, like every bucket)."""
    return await ensure_object_store(nc, uploads_bucket(subjects or Subjects()),
                                     replicas=replicas)


def object_digest(sha256: bytes) -> str:
    """How the object store writes a SHA-256 in an object's info."""
    return f"SHA-256={base64.urlsafe_b64encode(sha256).decode()}"


@dataclass(frozen=True, slots=True)
class Upload:
    file: UploadedFile
    #: False when an object with the same digest was already in the bucket
    sent: bool


async def upload(store: ObjectStore, path: str, data: bytes) -> Upload:
    """Put ``data`` (the file the job will call ``path``) into the store under its
    SHA-256, unless an object with that name and digest is already there."""
    sha = hashlib.sha256(data).digest()
    name = sha.hex()
    file = UploadedFile(path=path, object=name, sha256=name, size=len(data))
    try:
        info = await through_elections(lambda: store.get_info(name))
    except ObjectNotFoundError:
        info = None
    if info is not None and info.digest == object_digest(sha) and info.size == len(data):
        return Upload(file, sent=False)
    await through_elections(lambda: store.put(name, data))
    return Upload(file, sent=True)
