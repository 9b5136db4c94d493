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

import time
from typing import Unpack

import anyio
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from prometheus_client import Counter, Histogram

from ragbus.config import Settings
from ragbus.runtime import Actor, ActorOptions, WorkerThread
from ragbus.runtime.audit import ensure_audit_stream

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
