"""A job's progress: counted in one place, stored in KV, published on the bus.

Publishing is throttled (``interval``) except for state changes, so a job of
thousands of small documents does not flood its watchers.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from ragbus.subjects import FileError, JobProgress, JobState, Subjects, now_ms

__all__ = ("Progress",)


class Progress:
    def __init__(
        self,
        nc: NATS,
        kv: KeyValue,
        subjects: Subjects,
        job_id: str,
        *,
        submitted_at: int,
        attempt: int,
        interval_s: float,
    ) -> None:
        self._nc = nc
        self._kv = kv
        self._subject = subjects.ingest_progress(job_id)
        self._interval = interval_s
        self._last = 0.0
        self.job_id = job_id
        self.state = JobState.RUNNING
        self.submitted_at = submitted_at
        self.attempt = attempt
        self.files_total = 0
        self.files_done = 0
        self.docs_done = 0
        self.docs_changed = 0
        self.chunks_total = 0
        self.chunks_done = 0
        self.embeddings_computed = 0
        self.embeddings_reused = 0
        self.docs_reembedded = 0
        self.errors: list[FileError] = []
        self.message = ""
        self.finished_at: int | None = None
        self.corpus_version: int | None = None
        # a file of many records counts as its documents are done
        self._file_fraction = 0.0

    def file_progress(self, done: int, total: int) -> None:
        self._file_fraction = done / total if total else 0.0

    def snapshot(self) -> JobProgress:
        if self.state in (JobState.SUCCEEDED, JobState.FAILED):
            fraction = 1.0
        elif self.files_total:
            fraction = min(1.0, (self.files_done + self._file_fraction) / self.files_total)
        else:
            fraction = 0.0
        return JobProgress(
            job_id=self.job_id,
            state=self.state,
            progress=round(fraction, 4),
            files_total=self.files_total,
            files_done=self.files_done,
            docs_done=self.docs_done,
            docs_changed=self.docs_changed,
            chunks_total=self.chunks_total,
            chunks_done=self.chunks_done,
            embeddings_computed=self.embeddings_computed,
            embeddings_reused=self.embeddings_reused,
            docs_reembedded=self.docs_reembedded,
            errors=list(self.errors),
            message=self.message,
            submitted_at=self.submitted_at,
            updated_at=now_ms(),
            finished_at=self.finished_at,
            attempt=self.attempt,
            corpus_version=self.corpus_version,
        )

    async def publish(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self._interval:
            return
        self._last = now
        body = msgspec.json.encode(self.snapshot())
        await self._kv.put(self.job_id, body)
        await self._nc.publish(self._subject, body)

    async def finish(self, state: JobState, message: str = "", **extra: Any) -> JobProgress:
        self.state = state
        self.message = message
        self.finished_at = now_ms()
        await self.publish(force=True)
        return self.snapshot()
