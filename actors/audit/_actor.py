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

One audit-logger per store: the store is locked, because two writers would fork
the chain. Replicas for availability would need a store each.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Unpack

import anyio
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from prometheus_client import Counter, Histogram

from ragbus.config import Settings
from ragbus.runtime import (
    Actor,
    ActorOptions,
    BadRequestError,
    Context,
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
from ragbus.subjects import Restore, Restored, Snapshot, Snapshotted

from ._errors import AuditStoreError
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

    async def _keep(self, msgs: list[Msg]) -> None:
        batch = [Incoming(m.data, m.metadata.sequence.stream, m.subject) for m in msgs]
        started = time.perf_counter()
        result = await self.worker.run(self.store.append, batch)
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
