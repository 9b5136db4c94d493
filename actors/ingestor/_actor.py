"""The ingestor actor: takes jobs from the durable work queue, manages documents.

Jobs come from a JetStream pull consumer (at-least-once): a job is acknowledged
only when it has finished, so an ingestor that dies mid-job leaves it to be
redelivered, and because every write is idempotent the retry converges on the
same index without duplicates. ``max_ack_pending`` bounds jobs in flight across
all replicas.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Unpack

import anyio
import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, ObjectNotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore
from prometheus_client import Counter, Gauge, Histogram

from ragbus.config import Settings
from ragbus.runtime import (
    Actor,
    ActorOptions,
    BadRequestError,
    Context,
    Durable,
    NotFoundError,
    RagbusError,
    endpoint,
    kv_entries,
)
from ragbus.runtime.jetstream import store_index_update, through_elections
from ragbus.subjects import (
    AuditKind,
    AuditOutcome,
    CorpusVersion,
    DocChanged,
    DocDelete,
    DocGet,
    DocList,
    DocListed,
    ErrorCode,
    IndexUpdate,
    IngestRequest,
    JobGet,
    JobList,
    JobListed,
    JobProgress,
    JobState,
    Message,
    PayloadPatch,
    corpus_bucket,
    docs_bucket,
    index_stream,
    ingest_stream,
    jobs_bucket,
    now_ms,
    uploads_bucket,
)

from ._job import JobRunner
from ._manifest import Manifests
from ._progress import Progress

__all__ = ("Ingestor",)

DURABLE = "ingestor"

#: how often the queue's backlog is read for ``ragbus_ingest_jobs_waiting``: one small
#: JetStream API request, and a backlog is a matter of minutes, not milliseconds
BACKLOG_INTERVAL_S = 5.0
#: how long removing a finished job's uploads may take before it is left to the TTL
REMOVE_UPLOADS_S = 30.0
_WAIT_BUCKETS = (0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)


@dataclass(slots=True)
class _Job:
    """What a running job keeps for its success or failure record."""

    progress: Progress
    started: float = field(default_factory=time.monotonic)


class Ingestor(Actor):
    """Turns documents into indexed chunks; only what changed is embedded."""

    name = "ingestor"

    def __init__(self, settings: Settings | None = None,
                 **options: Unpack[ActorOptions]) -> None:
        super().__init__(settings, **options)
        self.config = self.settings.ingestor
        self._jobs_kv: KeyValue | None = None
        self._corpus_kv: KeyValue | None = None
        self._manifests: Manifests | None = None
        self._uploads: ObjectStore | None = None
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
        await self.ensure_stream(ingest_stream(s))
        await self.ensure_stream(index_stream(s))
        self._jobs_kv = await self.ensure_kv(jobs_bucket(s))
        self._corpus_kv = await self.ensure_kv(corpus_bucket(s))
        self._manifests = Manifests(await self.ensure_kv(docs_bucket(s)))
        self._uploads = await self.ensure_object_store(uploads_bucket(s))

    # -- jobs ---------------------------------------------------------------------------
    async def background(self) -> None:
        """Keep ``ragbus_ingest_jobs_waiting`` current: the ingest lag an operator alerts on.

        Read from the durable consumer, not from the messages taken, because a backlog
        builds exactly while every ingestor is too busy to take anything.
        """
        js = self.nc.jetstream()
        while not self.stopping:
            try:
                info = await js.consumer_info(self.subjects.ingest_stream, DURABLE)
            except Exception as exc:  # not created yet, or the bus is reconnecting
                self.log.debug("ingest.backlog_unknown", error=repr(exc))
                await anyio.sleep(min(0.2, BACKLOG_INTERVAL_S))
                continue
            self._waiting.set(info.num_pending or 0)
            await anyio.sleep(BACKLOG_INTERVAL_S)

    def _queue(self) -> Durable:
        cfg = self.config
        return Durable(DURABLE, stream=lambda s: s.ingest_stream, ack_wait_s=cfg.ack_wait_s,
                       max_ack_pending=cfg.max_ack_pending, max_deliver=cfg.max_deliver,
                       concurrency=cfg.concurrent_jobs, timeout_s=cfg.job_timeout_s)

    @endpoint(lambda s: s.ingest_submit, request=IngestRequest, durable=_queue)
    async def ingest(self, request: IngestRequest, ctx: Context) -> None:
        """One job from the work queue; the kernel acks it when this returns."""
        ctx.cancellable_as(request.job_id)
        meta = ctx.msg.metadata
        if ctx.attempt == 1 and meta is not None and meta.timestamp is not None:
            self._queued_s.observe(max(0.0, time.time() - meta.timestamp.timestamp()))
        job = ctx.state = _Job(await self._progress(request.job_id, ctx))
        ctx.log.info("ingest.job.started", job_id=request.job_id, attempt=ctx.attempt,
                     path=request.path, documents=len(request.documents))
        runner = JobRunner(self.nc, self.subjects, self.config, self.manifests, job.progress,
                           msgspec.structs.replace(request, deadline=ctx.deadline),
                           self._uploads, self._corpus_kv)
        try:
            await runner.run()
        except anyio.get_cancelled_exc_class():
            if self.stopping:  # the kernel hands it to another ingestor
                self._count_job("handed_back", job.progress)
            raise
        progress = job.progress
        if runner.last_seq is not None:
            progress.corpus_version = await self._bump_corpus(
                request.collection, request.job_id, runner.last_seq)
        if progress.docs_changed:
            await ctx.audit(AuditKind.DOC_CHANGED, subject=request.collection,
                            sizes={"docs": progress.docs_changed},
                            details={"job_id": request.job_id})
        await self._remove_uploads(request, ctx)  # gone when the job says it has finished
        snapshot = await progress.finish(JobState.SUCCEEDED, "done")
        self._count_job("succeeded", progress)
        await self._audit_job(request, ctx, AuditOutcome.OK, "done")
        self.jobs_run += 1
        ctx.log.info("ingest.job.succeeded", job_id=request.job_id, docs=snapshot.docs_done,
                     chunks=snapshot.chunks_total, computed=snapshot.embeddings_computed,
                     reused=snapshot.embeddings_reused, errors=len(snapshot.errors))

    async def job_failed(self, request: Message, ctx: Context, error: RagbusError, *,
                         retrying: bool) -> None:
        assert isinstance(request, IngestRequest)
        job: _Job | None = ctx.state
        if job is None:  # failed before it started: a progress record still says why
            job = _Job(await self._progress(request.job_id, ctx))
        message = f"{error.code.value}: {error.message}"
        self._count_job("retried" if retrying else "failed", job.progress)
        if retrying:
            job.progress.message = f"attempt {ctx.attempt} failed ({message}); will retry"
            await job.progress.publish(force=True)
            return
        await self._remove_uploads(request, ctx)
        await job.progress.finish(JobState.FAILED, message)
        outcome = (AuditOutcome.CANCELLED if error.code == ErrorCode.CANCELLED
                   else AuditOutcome.FAILED)
        await self._audit_job(request, ctx, outcome, message, error.code.value, job)

    async def _remove_uploads(self, request: IngestRequest, ctx: Context) -> None:
        """The job has finished: its uploaded files go (unless ``keep_uploads``). Best
        effort within :data:`REMOVE_UPLOADS_S`; what is left expires with the bucket's TTL.
        An object another job still reads would be gone for it too: that job records the
        file as unreadable, and submitting the file again uploads it again."""
        store = self._uploads
        if self.config.keep_uploads or store is None or not request.uploads:
            return
        removed = 0
        with anyio.move_on_after(REMOVE_UPLOADS_S):
            for name in sorted({u.object for u in request.uploads}):
                try:
                    await through_elections(functools.partial(store.delete, name))
                    removed += 1
                except ObjectNotFoundError:
                    continue
                except Exception as exc:  # the job is done either way
                    ctx.log.warning("ingest.uploads_not_removed", job_id=request.job_id,
                                    error=repr(exc))
                    return
        ctx.log.info("ingest.uploads_removed", job_id=request.job_id, objects=removed)

    async def _audit_job(self, request: IngestRequest, ctx: Context, outcome: AuditOutcome,
                         message: str, code: str | None = None, job: _Job | None = None) -> None:
        job = job or ctx.state
        assert job is not None
        snapshot = job.progress.snapshot()
        await ctx.audit(
            AuditKind.INGEST_JOB, subject=request.job_id, outcome=outcome, code=code,
            duration_ms=(time.monotonic() - job.started) * 1000,
            sizes={"files": snapshot.files_done, "docs": snapshot.docs_done,
                   "docs_changed": snapshot.docs_changed, "chunks": snapshot.chunks_total,
                   "embeddings_computed": snapshot.embeddings_computed,
                   "embeddings_reused": snapshot.embeddings_reused,
                   "file_errors": len(snapshot.errors)},
            details={"collection": request.collection, "attempt": ctx.attempt,
                     "path": request.path, "message": message})

    async def _progress(self, job_id: str, ctx: Context) -> Progress:
        return Progress(self.nc, self.jobs_kv, self.subjects, job_id,
                        submitted_at=await self._submitted_at(job_id), attempt=ctx.attempt,
                        interval_s=self.config.progress_interval_ms / 1000)

    async def _submitted_at(self, job_id: str) -> int:
        try:
            entry = await self.jobs_kv.get(job_id)
            if entry.value:
                return msgspec.json.decode(entry.value, type=JobProgress).submitted_at
        except (KeyNotFoundError, msgspec.DecodeError):
            pass
        return now_ms()

    async def _bump_corpus(self, collection: str, job_id: str | None, seq: int) -> int:
        """Raise the collection's corpus version to ``seq``, the index stream sequence of
        its newest update whose job has finished (compare-and-set, never down, so
        replicas agree). Queries treat it as the minimum a replica must have applied."""
        assert self._corpus_kv is not None
        kv = self._corpus_kv
        for _ in range(100):
            try:
                entry = await kv.get(collection)
                current, revision = int(entry.value or b"0"), entry.revision
            except KeyNotFoundError:
                current, revision = 0, None
            if current >= seq:
                return current
            try:
                if revision is None:
                    await kv.create(collection, str(seq).encode())
                else:
                    await kv.update(collection, str(seq).encode(), last=revision)
                break
            except KeyWrongLastSequenceError:
                continue  # another ingestor raised it first; read again
        else:
            raise RuntimeError(f"corpus version of {collection!r} kept changing under us")
        await self.announce(CorpusVersion(collection=collection, version=seq, job_id=job_id))
        return seq

    async def announce(self, change: CorpusVersion) -> None:
        """Tell whoever listens on ``rag.corpus.version``. The KV bucket is the truth (the
        retriever reads it on every query); the message is a courtesy that can be lost."""
        await self.nc.publish(self.subjects.corpus_version, msgspec.json.encode(change))

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
            raise NotFoundError(f"no document {request.doc_id!r} in {request.collection!r}")
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
            raise NotFoundError(f"no document {request.doc_id!r} in {request.collection!r}")
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
        seq = await store_index_update(self.nc, self.subjects, update) if ids else None
        if request.purge:
            await self.manifests.purge(request.collection, request.doc_id)
            info = manifest.info()
        else:
            manifest = msgspec.structs.replace(manifest, deleted=True, updated_at=now_ms())
            await self.manifests.put(manifest)
            info = manifest.info()
        if seq is not None:
            await self._bump_corpus(request.collection, None, seq)
        ctx.log.info("doc.purged" if request.purge else "doc.deleted", doc_id=request.doc_id)
        return DocChanged(request_id=request.request_id, doc=info, purged=request.purge)

    @endpoint(lambda s: s.jobs("get"), request=JobGet)
    async def jobs_get(self, request: JobGet, ctx: Context) -> JobListed:
        try:
            entry = await self.jobs_kv.get(request.job_id)
        except KeyNotFoundError:
            raise NotFoundError(f"no job {request.job_id!r} (jobs are kept 30 days)") from None
        if not entry.value:
            raise NotFoundError(f"no job {request.job_id!r}")
        return JobListed(
            request_id=request.request_id, jobs=[msgspec.json.decode(entry.value, type=JobProgress)]
        )

    @endpoint(lambda s: s.jobs("list"), request=JobList)
    async def jobs_list(self, request: JobList, ctx: Context) -> JobListed:
        if request.limit < 1:
            raise BadRequestError("limit must be at least 1")
        jobs = [
            msgspec.json.decode(e.value, type=JobProgress)
            for e in await kv_entries(self.jobs_kv)
            if e.value
        ]
        jobs.sort(key=lambda j: j.submitted_at, reverse=True)
        return JobListed(request_id=request.request_id, jobs=jobs[: request.limit])
