"""The ingestor actor: takes jobs from the durable work queue, manages documents.

Jobs come from a JetStream pull consumer (at-least-once): a job is acknowledged
only when it has finished, so an ingestor that dies mid-job leaves it to be
redelivered, and because every write is idempotent the retry converges on the
same index without duplicates. ``max_ack_pending`` bounds jobs in flight across
all replicas.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import anyio
import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from prometheus_client import Counter, Gauge, Histogram

from ragbus.runtime import (
    Actor,
    BadRequest,
    Client,
    Context,
    NotFound,
    RagbusError,
    endpoint,
    ensure_kv,
    ensure_stream,
    kv_entries,
)
from ragbus.subjects import (
    CorpusVersion,
    DocChanged,
    DocDelete,
    DocGet,
    DocList,
    DocListed,
    IndexApplied,
    IndexUpdate,
    IngestRequest,
    JobGet,
    JobList,
    JobListed,
    JobProgress,
    JobState,
    PayloadPatch,
    corpus_bucket,
    deadline_after,
    docs_bucket,
    ingest_stream,
    jobs_bucket,
    now_ms,
)
from ragbus.subjects._audit import AuditKind, AuditOutcome

from ._job import JobRunner
from ._manifest import Manifests
from ._progress import Progress

__all__ = ("Ingestor",)

DURABLE = "ingestor"

#: how often the queue's backlog is read for ``ragbus_ingest_jobs_waiting``: one small
#: JetStream API request, and a backlog is a matter of minutes, not milliseconds
BACKLOG_INTERVAL_S = 5.0
_WAIT_BUCKETS = (0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)


class Ingestor(Actor):
    """Turns documents into indexed chunks; only what changed is embedded."""

    name = "ingestor"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config = self.settings.ingestor
        self._jobs_kv: KeyValue | None = None
        self._corpus_kv: KeyValue | None = None
        self._manifests: Manifests | None = None
        self.jobs_run = 0
        m = self.metrics
        self._jobs = m.get(Counter, "ragbus_ingest_jobs",
                           "Ingest jobs by how an attempt ended (succeeded, failed, retried, "
                           "handed_back)", ["actor", "outcome"])
        self._chunks = m.get(Counter, "ragbus_ingest_chunks",
                             "Chunks written by ingest jobs, by whether their embedding was "
                             "computed or reused", ["actor", "embedding"])
        self._waiting = m.get(Gauge, "ragbus_ingest_jobs_waiting",
                              "Jobs in the work queue no ingestor has taken yet",
                              ["actor"]).labels(self.name)
        self._queued_s = m.get(Histogram, "ragbus_ingest_queue_seconds",
                               "From a job's submission to an ingestor taking it (first "
                               "delivery)", ["actor"], buckets=_WAIT_BUCKETS).labels(self.name)

    def _count_job(self, outcome: str, progress: Progress) -> None:
        """One attempt's end: its outcome and the chunks it wrote, whatever the outcome."""
        self._jobs.labels(self.name, outcome).inc()
        self._chunks.labels(self.name, "computed").inc(progress.embeddings_computed)
        self._chunks.labels(self.name, "reused").inc(progress.embeddings_reused)

    @property
    def manifests(self) -> Manifests:
        assert self._manifests is not None, "setup() has not run"
        return self._manifests

    @property
    def jobs_kv(self) -> KeyValue:
        assert self._jobs_kv is not None, "setup() has not run"
        return self._jobs_kv

    async def setup(self) -> None:
        s = self.subjects
        await ensure_stream(self.nc, ingest_stream(s))
        self._jobs_kv = await ensure_kv(self.nc, jobs_bucket(s))
        self._corpus_kv = await ensure_kv(self.nc, corpus_bucket(s))
        self._manifests = Manifests(await ensure_kv(self.nc, docs_bucket(s)))

    # -- jobs ---------------------------------------------------------------------------
    async def background(self) -> None:
        js = self.nc.jetstream()
        cfg = self.config
        sub = await js.pull_subscribe(
            self.subjects.ingest_submit,
            durable=DURABLE,
            stream=self.subjects.ingest_stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=cfg.ack_wait_s,
                max_ack_pending=cfg.max_ack_pending,
                max_deliver=cfg.max_deliver,
            ),
        )
        slots = anyio.Semaphore(cfg.concurrent_jobs)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch_backlog, sub)
            while not self.stopping:
                await slots.acquire()
                try:
                    msgs = await sub.fetch(1, timeout=0.5)
                except nats.errors.TimeoutError:
                    slots.release()
                    continue
                for msg in msgs:
                    tg.start_soon(self._take, msg, slots)
            # stopping: unfinished jobs drain under the actor's grace period

    async def _watch_backlog(self, sub: JetStreamContext.PullSubscription) -> None:
        """Keep ``ragbus_ingest_jobs_waiting`` current: the ingest lag an operator alerts on.

        Read from the durable consumer here, not from the messages taken, because a backlog
        builds exactly while every ingestor is too busy to take anything.
        """
        while not self.stopping:
            try:
                info = await sub.consumer_info()
            except Exception as exc:  # the bus is reconnecting: keep the last figure
                self.log.debug("ingest.backlog_unknown", error=repr(exc))
            else:
                self._waiting.set(info.num_pending or 0)
            await anyio.sleep(BACKLOG_INTERVAL_S)

    async def _take(self, msg: Msg, slots: anyio.Semaphore) -> None:
        try:
            await self._run_job(msg)
        finally:
            slots.release()

    async def _run_job(self, msg: Msg) -> None:
        attempt = msg.metadata.num_delivered if msg.metadata else 1
        if attempt == 1 and msg.metadata and msg.metadata.timestamp:
            self._queued_s.observe(max(0.0, time.time() - msg.metadata.timestamp.timestamp()))
        try:
            request = msgspec.json.decode(msg.data, type=IngestRequest)
        except msgspec.DecodeError as exc:
            self.log.warning("ingest.bad_request", error=str(exc))
            await msg.term()  # redelivering a message that cannot decode helps no one
            return
        deadline = request.deadline or deadline_after(self.config.job_timeout_s)
        progress = Progress(
            self.nc,
            self.jobs_kv,
            self.subjects,
            request.job_id,
            submitted_at=await self._submitted_at(request.job_id),
            attempt=attempt,
            interval_s=self.config.progress_interval_ms / 1000,
        )
        log = self.log.bind(job_id=request.job_id, request_id=request.request_id, attempt=attempt)
        runner = JobRunner(
            self.nc,
            self.subjects,
            self.config,
            self.manifests,
            progress,
            msgspec.structs.replace(request, deadline=deadline),
        )
        scope = anyio.CancelScope(
            deadline=anyio.current_time() + max(0.0, (deadline - now_ms()) / 1000)
        )
        works = [
            self.inflight.add(request.request_id, scope),
            self.inflight.add(request.job_id, scope),
        ]
        log.info("ingest.job.started", path=request.path, documents=len(request.documents))
        started = time.monotonic()

        async def audit(outcome: AuditOutcome, message: str, code: str | None = None) -> None:
            snapshot = progress.snapshot()
            await self.audit.emit(
                AuditKind.INGEST_JOB, subject=request.job_id, request_id=request.request_id,
                trace_id=request.trace.trace_id if request.trace else None, outcome=outcome,
                code=code, duration_ms=(time.monotonic() - started) * 1000,
                sizes={"files": snapshot.files_done, "docs": snapshot.docs_done,
                       "docs_changed": snapshot.docs_changed, "chunks": snapshot.chunks_total,
                       "embeddings_computed": snapshot.embeddings_computed,
                       "embeddings_reused": snapshot.embeddings_reused,
                       "file_errors": len(snapshot.errors)},
                details={"collection": request.collection, "attempt": attempt,
                         "path": request.path, "message": message})

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._keep_alive, msg)
                with scope:
                    await runner.run()
                tg.cancel_scope.cancel()
            if scope.cancelled_caught:
                if any(w.stopping for w in works):
                    # shutting down: hand the job to another ingestor right away
                    with anyio.CancelScope(shield=True):
                        await msg.nak()
                    self._count_job("handed_back", progress)
                    log.info("ingest.job.handed_back")
                    return
                why = "cancelled" if any(w.cancel_requested for w in works) else "deadline exceeded"
                await progress.finish(JobState.FAILED, why)
                await msg.ack()
                self._count_job("failed", progress)
                log.info("ingest.job.failed", reason=why)
                cancelled = any(w.cancel_requested for w in works)
                await audit(AuditOutcome.CANCELLED if cancelled else AuditOutcome.FAILED, why,
                            "CANCELLED" if cancelled else "DEADLINE_EXCEEDED")
                return
        except RagbusError as exc:
            # the embedder or retriever failed: retry later unless this was the last try
            last = attempt >= self.config.max_deliver
            message = f"{exc.code}: {exc.message}"
            if last:
                await progress.finish(JobState.FAILED, message)
                await msg.term()
                await audit(AuditOutcome.FAILED, message, exc.code.value)
            else:
                progress.message = f"attempt {attempt} failed ({message}); will retry"
                await progress.publish(force=True)
                await msg.nak(delay=min(30.0, 2.0**attempt))
            self._count_job("failed" if last else "retried", progress)
            log.warning("ingest.job.error", error=message, will_retry=not last)
            return
        finally:
            for work in works:
                self.inflight.remove(work)
        if progress.docs_changed:
            await self._bump_corpus(request.collection, request.job_id)
            await self.audit.emit(
                AuditKind.DOC_CHANGED, subject=request.collection,
                request_id=request.request_id, sizes={"docs": progress.docs_changed},
                details={"job_id": request.job_id})
        snapshot = await progress.finish(JobState.SUCCEEDED, "done")
        await msg.ack()
        self._count_job("succeeded", progress)
        await audit(AuditOutcome.OK, "done")
        self.jobs_run += 1
        log.info(
            "ingest.job.succeeded",
            docs=snapshot.docs_done,
            chunks=snapshot.chunks_total,
            computed=snapshot.embeddings_computed,
            reused=snapshot.embeddings_reused,
            errors=len(snapshot.errors),
        )

    async def _keep_alive(self, msg: Msg) -> None:
        """Tell JetStream the job is alive so it is not redelivered while it runs."""
        while True:
            await anyio.sleep(self.config.ack_wait_s / 3)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def _submitted_at(self, job_id: str) -> int:
        try:
            entry = await self.jobs_kv.get(job_id)
            if entry.value:
                return msgspec.json.decode(entry.value, type=JobProgress).submitted_at
        except (KeyNotFoundError, msgspec.DecodeError):
            pass
        return now_ms()

    async def _bump_corpus(self, collection: str, job_id: str | None) -> int:
        """Increment the collection's corpus version (compare-and-set, so replicas agree)."""
        assert self._corpus_kv is not None
        kv = self._corpus_kv
        for _ in range(100):
            try:
                entry = await kv.get(collection)
                current, revision = int(entry.value or b"0"), entry.revision
            except KeyNotFoundError:
                current, revision = 0, None
            try:
                if revision is None:
                    await kv.create(collection, str(current + 1).encode())
                else:
                    await kv.update(collection, str(current + 1).encode(), last=revision)
                break
            except KeyWrongLastSequenceError:
                continue  # another ingestor bumped it first; read again
        else:
            raise RuntimeError(f"corpus version of {collection!r} kept changing under us")
        version = current + 1
        await self.nc.publish(
            self.subjects.corpus_version,
            msgspec.json.encode(
                CorpusVersion(collection=collection, version=version, job_id=job_id)
            ),
        )
        return version

    # -- documents and jobs API ------------------------------------------------------------
    @endpoint(lambda s: s.docs("list"), request=DocList)
    async def docs_list(self, request: DocList, ctx: Context) -> DocListed:
        docs = [
            m.info()
            for m in await self.manifests.all(request.collection)
            if request.include_deleted or not m.deleted
        ]
        return DocListed(
            request_id=request.request_id,
            total=len(docs),
            docs=docs[request.offset : request.offset + request.limit],
        )

    @endpoint(lambda s: s.docs("get"), request=DocGet)
    async def docs_get(self, request: DocGet, ctx: Context) -> DocListed:
        manifest = await self.manifests.get(request.collection, request.doc_id)
        if manifest is None:
            raise NotFound(f"no document {request.doc_id!r} in {request.collection!r}")
        return DocListed(request_id=request.request_id, docs=[manifest.info()], total=1)

    @endpoint(lambda s: s.docs("delete"), request=DocDelete)
    async def docs_delete(self, request: DocDelete, ctx: Context) -> DocChanged:
        kind = AuditKind.DOC_PURGED if request.purge else AuditKind.DOC_DELETED
        started = time.monotonic()
        try:
            changed = await self._delete(request, ctx)
        except RagbusError as exc:
            await self.audit.emit(
                kind, subject=request.doc_id, request_id=request.request_id,
                trace_id=ctx.trace.trace_id, outcome=AuditOutcome.FAILED, code=exc.code.value,
                duration_ms=(time.monotonic() - started) * 1000,
                details={"collection": request.collection})
            raise
        await self.audit.emit(
            kind, subject=request.doc_id, request_id=request.request_id,
            trace_id=ctx.trace.trace_id, duration_ms=(time.monotonic() - started) * 1000,
            sizes={"chunks": changed.doc.chunks}, details={"collection": request.collection})
        return changed

    async def _delete(self, request: DocDelete, ctx: Context) -> DocChanged:
        manifest = await self.manifests.get(request.collection, request.doc_id)
        if manifest is None:
            raise NotFound(f"no document {request.doc_id!r} in {request.collection!r}")
        ids = [ref.id for ref in manifest.chunks]
        if request.purge:
            update = IndexUpdate(
                collection=request.collection,
                model_id="",
                dim=0,
                deletes=ids,
                deadline=ctx.deadline,
            )
        else:
            update = IndexUpdate(
                collection=request.collection,
                model_id="",
                dim=0,
                patches=[PayloadPatch(ids=ids, payload={"deleted": True})],
                deadline=ctx.deadline,
            )
        if ids:
            await Client(self.nc, self.subjects).request(
                self.subjects.index_apply(request.collection), update, IndexApplied
            )
        if request.purge:
            await self.manifests.purge(request.collection, request.doc_id)
            info = manifest.info()
        else:
            manifest = msgspec.structs.replace(manifest, deleted=True, updated_at=now_ms())
            await self.manifests.put(manifest)
            info = manifest.info()
        await self._bump_corpus(request.collection, None)
        ctx.log.info("doc.purged" if request.purge else "doc.deleted", doc_id=request.doc_id)
        return DocChanged(request_id=request.request_id, doc=info, purged=request.purge)

    @endpoint(lambda s: s.jobs("get"), request=JobGet)
    async def jobs_get(self, request: JobGet, ctx: Context) -> JobListed:
        try:
            entry = await self.jobs_kv.get(request.job_id)
        except KeyNotFoundError:
            raise NotFound(f"no job {request.job_id!r} (jobs are kept 30 days)") from None
        if not entry.value:
            raise NotFound(f"no job {request.job_id!r}")
        return JobListed(
            request_id=request.request_id, jobs=[msgspec.json.decode(entry.value, type=JobProgress)]
        )

    @endpoint(lambda s: s.jobs("list"), request=JobList)
    async def jobs_list(self, request: JobList, ctx: Context) -> JobListed:
        if request.limit < 1:
            raise BadRequest("limit must be at least 1")
        jobs = [
            msgspec.json.decode(e.value, type=JobProgress)
            for e in await kv_entries(self.jobs_kv)
            if e.value
        ]
        jobs.sort(key=lambda j: j.submitted_at, reverse=True)
        return JobListed(request_id=request.request_id, jobs=jobs[: request.limit])
