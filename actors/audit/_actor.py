"""The audit-logger: the audit stream into a tamper-evident store on disk.

A durable pull consumer (explicit acks: acknowledging one message must never
acknowledge another that a crashed predecessor took but did not write). Each
batch is written, fsynced, and only then acknowledged; a batch interrupted
anywhere before the acknowledgement comes again after ``audit.ack_wait_s`` and
the store's event-id memory turns it into no new records.

An event its subject does not vouch for (an ``actor`` of another role than the
subject's, see ``_origin``) is acknowledged like any other, so it is not
redelivered forever, counted as ``rejected``, logged, and replaced in the store by
an ``audit.rejected`` note with its digest and why.

Feedback (``rag.feedback``) is kept here too, as an ``answer.feedback`` event it
publishes itself, linked to the rated answer's ``answer.done`` (see ``_feedback``):
the logger is the one place that sees every answer, so the provider, model, prompt
version and cache hit come from the router's own record, not from the rater.

One audit-logger per store: the store is locked, because two writers would fork
the chain. Replicas for availability would need a store each.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Unpack

import anyio
import anyio.to_thread
import msgspec
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from prometheus_client import Counter, Histogram

from ragbus.config import Settings
from ragbus.runtime import (
    Actor,
    ActorOptions,
    BadRequestError,
    Context,
    UnavailableError,
    WorkerThread,
    endpoint,
)
from ragbus.runtime.archive import (
    fetch_object,
    open_backup_bucket,
    pack,
    sha256_file,
    store_object,
    unpack,
)
from ragbus.runtime.audit import ensure_audit_stream
from ragbus.subjects import (
    AuditEvent,
    AuditKind,
    Feedback,
    FeedbackRecorded,
    Restore,
    Restored,
    Snapshot,
    Snapshotted,
    now_ms,
)

from ._errors import AuditStoreError
from ._feedback import Answered, AnswerIndex, answered, find_answer
from ._files import store_dir
from ._origin import origin_check
from ._pull import BatchPuller
from ._store import AuditStore, Incoming

__all__ = ("AuditLogger",)


class AuditLogger(Actor):
    """Keeps every audit event once, in order of arrival, in a hash-chained JSONL store."""

    name = "audit-logger"

    def __init__(self, settings: Settings | None = None,
                 **options: Unpack[ActorOptions]) -> None:
        super().__init__(settings, **options)
        self.config = self.settings.audit
        self.store = AuditStore(store_dir(self.settings), fsync=self.config.fsync,
                                dedupe_ids=self.config.dedupe_ids,
                                check=origin_check(self.subjects))
        self.worker = WorkerThread("audit-store")
        self.answers = AnswerIndex(self.config.feedback_index)
        self._check = origin_check(self.subjects)
        self._feedback = self.metrics.get(Counter, "ragbus_feedback",
                                          "Ratings of answers kept, by rating and whether "
                                          "the answer was found", ["actor", "rating", "known"])
        records = self.metrics.get(Counter, "ragbus_audit_records",
                                   "Audit messages taken from the stream, by what became of them",
                                   ["actor", "result"])
        self._written = records.labels(self.name, "written")
        self._duplicates = records.labels(self.name, "duplicate")
        self._rejected = records.labels(self.name, "rejected")
        self._batch_seconds = self.metrics.get(
            Histogram, "ragbus_audit_batch_seconds", "Write and fsync time of one batch",
            ["actor"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
        ).labels(self.name)

    def consumer_config(self) -> ConsumerConfig:
        cfg = self.config
        return ConsumerConfig(
            durable_name=cfg.durable,
            name=cfg.durable,
            filter_subject=self.subjects.audit_all,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=cfg.ack_wait_s,
            max_ack_pending=cfg.max_ack_pending,
            max_deliver=-1,  # an audit event is never given up on
            description="ragbus audit-logger: the audit store on disk",
        )

    async def setup(self) -> None:
        await self.worker.run(self.store.open)
        self.log.info("audit.store_open", directory=str(self.store.directory),
                      seq=self.store.seq)
        await ensure_audit_stream(self.nc, self.settings)
        # create or update (ack_wait and limits may change between runs)
        await self.nc.jetstream().add_consumer(self.subjects.audit_stream,
                                               self.consumer_config())

    async def teardown(self) -> None:
        try:
            await self.worker.run(self.store.close)
        finally:
            self.worker.close()

    async def background(self) -> None:
        cfg = self.config
        puller = BatchPuller(self.nc, self.subjects.audit_stream, cfg.durable)
        await puller.start()
        try:
            while not self.stopping:
                msgs = await puller.fetch(cfg.batch_size, cfg.fetch_wait_s)
                if msgs:
                    # a stop must not cut a batch between its fsync and its acks
                    with anyio.CancelScope(shield=True):
                        await self._keep(msgs)
        finally:
            with anyio.CancelScope(shield=True):
                await puller.stop()

    def _index(self, batch: list[Incoming]) -> None:
        """Remember the answers just written, for the feedback that may follow."""
        for item in batch:
            if not item.subject.endswith(".answer.done"):
                continue
            try:
                event = msgspec.json.decode(item.data, type=AuditEvent)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            found = answered(event) if self._check(item, event) is None else None
            if found is not None:
                self.answers.add(found)

    async def _answer_of(self, request_id: str, ctx: Context) -> Answered | None:
        """The rated answer: indexed, else in the store, else (not written yet) waited for."""
        found = self.answers.get(request_id)
        if found is not None:
            return found
        since = now_ms() - int(self.config.feedback_lookback_s * 1000)
        with anyio.move_on_after(max(0.0, ctx.remaining() - 0.5)):
            found = await anyio.to_thread.run_sync(find_answer, self.store.directory,
                                                   request_id, since, abandon_on_cancel=True)
        if found is not None:
            return found
        wait = min(self.config.feedback_wait_s, max(0.0, ctx.remaining() - 0.5))
        return await self.answers.wait(request_id, wait)

    @endpoint(lambda s: s.feedback, request=Feedback)
    async def feedback(self, request: Feedback, ctx: Context) -> FeedbackRecorded:
        """Keep a rating as an ``answer.feedback`` event linked to the rated answer; one
        for an answer not found is kept too, marked ``known: false``."""
        if not self.config.enabled:
            raise UnavailableError("auditing is off (audit.enabled = false): feedback is "
                                   "not kept")
        found = await self._answer_of(request.request_id, ctx)
        details: dict[str, Any] = {"rating": request.rating, "known": found is not None}
        if found is not None:
            details.update(found.details())
        sizes = {}
        if request.comment:
            details["comment"] = self.audit.keep_text(request.comment)
            details["comment_text"] = self.config.text
            sizes["comment_chars"] = len(request.comment)
        session = request.session or (found.session if found is not None else None)
        event = self.audit.event(AuditKind.ANSWER_FEEDBACK, request_id=request.request_id,
                                 trace_id=ctx.trace.trace_id, session=session,
                                 subject=request.request_id, sizes=sizes, details=details)
        if not await self.audit.put(event):
            raise UnavailableError("the feedback could not be queued for the audit stream "
                                   "(the audit queue is full): retry")
        self._feedback.labels(self.name, request.rating, str(found is not None).lower()).inc()
        ctx.log.info("audit.feedback", rating=request.rating, known=found is not None)
        return FeedbackRecorded(
            request_id=request.request_id, event_id=event.event_id, known=found is not None,
            prompt_version=found.prompt_version if found is not None else None,
            provider=found.provider if found is not None else None)

    async def _keep(self, msgs: list[Msg]) -> None:
        batch = [Incoming(m.data, m.metadata.sequence.stream, m.subject) for m in msgs]
        started = time.perf_counter()
        result = await self.worker.run(self.store.append, batch)
        self._index(batch)
        self._batch_seconds.observe(time.perf_counter() - started)
        for msg in msgs:
            await msg.ack()
        self._written.inc(result.written)
        self._duplicates.inc(result.duplicates)
        self._rejected.inc(result.rejected)
        if result.rejected:
            # each rejection is in the store as an audit.rejected record saying why
            self.log.warning("audit.rejected", count=result.rejected,
                             hint="`ragbus audit tail --kind audit.rejected` shows why")

    async def _caught_up(self, within_s: float) -> int:
        """Wait (up to ``within_s``) until every event in the stream is in the store;
        returns how many were still outstanding when it stopped waiting."""
        js = self.nc.jetstream()
        give_up = anyio.current_time() + within_s
        while True:
            info = await js.consumer_info(self.subjects.audit_stream, self.config.durable)
            outstanding = (info.num_pending or 0) + (info.num_ack_pending or 0)
            if not outstanding or anyio.current_time() >= give_up:
                return outstanding
            await anyio.sleep(0.1)

    @endpoint(lambda s: s.snapshot_audit, request=Snapshot)
    async def snapshot(self, request: Snapshot, ctx: Context) -> Snapshotted:
        """The store's files and HEAD, packed into the backup bucket as ``name``.

        First the logger catches up with the stream (for a few seconds at most), so the
        files hold every event the stream held when the backup began; the copy is made
        between two batches, where the files and HEAD agree.
        """
        outstanding = await self._caught_up(min(5.0, max(0.0, ctx.remaining() / 3)))
        obs = await open_backup_bucket(self.nc, self.subjects)
        with tempfile.TemporaryDirectory(prefix="ragbus-audit-backup-") as tmp:
            files, archive = Path(tmp) / "audit", Path(tmp) / "audit.tar.gz"
            seq = await self.worker.run(self.store.copy_files, files)
            await anyio.to_thread.run_sync(pack, files, archive)
            digest = await anyio.to_thread.run_sync(sha256_file, archive)
            await store_object(obs, request.name, archive)
            size = archive.stat().st_size
        self.log.info("audit.snapshot", records=seq, bytes=size, outstanding=outstanding)
        return Snapshotted(request_id=request.request_id, name=request.name, bytes=size,
                           sha256=digest, details={"records": seq, "head": self.store.head,
                                                   "outstanding": outstanding})

    @endpoint(lambda s: s.restore_audit, request=Restore)
    async def restore(self, request: Restore, ctx: Context) -> Restored:
        """Make the chain in archive ``name`` this store's, the store's own records
        appended after it (see ``AuditStore.replace_with``); new events continue it."""
        if request.dry_run:
            return Restored(request_id=request.request_id, details={"records": self.store.seq})
        obs = await open_backup_bucket(self.nc, self.subjects)
        with tempfile.TemporaryDirectory(prefix="ragbus-audit-restore-") as tmp:
            archive, files = Path(tmp) / "audit.tar.gz", Path(tmp) / "audit"
            await fetch_object(obs, request.name, archive, sha256=request.sha256)
            await anyio.to_thread.run_sync(unpack, archive, files)
            try:
                seq = await self.worker.run(self.store.replace_with, files)
            except AuditStoreError as exc:
                raise BadRequestError(str(exc)) from None
        self.log.info("audit.restored", records=seq, head=self.store.head)
        return Restored(request_id=request.request_id,
                        details={"records": seq, "head": self.store.head})
