"""A replica of a shard: the index stream applied in order, its position kept with the copy.

Each retriever instance that serves a shard keeps its own copy of it and reads the
shard's subject of the index stream through its own durable consumer
(``apply_<shard>_<replica>_<n>``). The position (the stream sequence of the last update
applied) is a small file beside the copy, replaced after each applied batch, so a
restart replays only the tail. The file, not the consumer, is the truth: the consumer is
recreated from it on start (a copy restored from a snapshot, or wiped, starts where its
files are) and whenever a delivery went missing (the consumer's own sequence skips one),
so updates apply strictly in order. What was applied after the last write of the file
is applied again after a crash, which converges: point ids are deterministic, and
upserts, deletes and payload sets replayed in order end in the same state.

The consumer acknowledges nothing (``AckPolicy.NONE``): the server never redelivers on
its own, which would reorder; a missed delivery is caught by the sequence check here.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import msgspec
from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from ragbus.runtime.jetstream import through_elections
from ragbus.subjects import IndexUpdate, Subjects

__all__ = ("Apply", "LagMetrics", "Position", "ShardLog", "consumer_name", "default_replica_id")

#: what applies one update to the copy (raises to stop the batch: it is fetched again)
Apply = Callable[[IndexUpdate], Awaitable[None]]

_POSITION_SUFFIX = ".applied"
#: how often an idle replica asks its consumer whether a delivery went missing
_CHECK_IDLE_S = 5.0
#: a consumer nobody has pulled from this long is removed by the server (a replica down
#: longer recreates its own from its position when it comes back)
_CONSUMER_IDLE_S = 3600.0
_DECODER = msgspec.json.Decoder(IndexUpdate)


class Position(msgspec.Struct, frozen=True, kw_only=True):
    """What the position file holds: a sequence means something only in its own stream,
    so the stream's creation time goes with it (a stream deleted and made again starts
    its sequences over)."""

    seq: int = 0
    stream: str = ""


@dataclass(frozen=True, slots=True)
class LagMetrics:
    """One replica's series of the apply metrics (labelled children)."""

    messages: Any  # Gauge: updates stored and not yet applied
    seconds: Any  # Gauge: how old the last applied update was when applied, while behind
    delay: Any  # Histogram: stored -> applied, per update
    applied: Any  # Gauge: stream sequence of the last update applied


def default_replica_id(data_dir: Path) -> str:
    """The host name and a digest of the data directory: the same across restarts of one
    instance, different for two instances on one host (each has its own data dir)."""
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40] or "host"
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:8]
    return f"{host}-{digest}"


def consumer_name(shard: str, replica: str) -> str:
    """The durable consumer one replica of one shard reads the index stream through."""
    return "apply_" + re.sub(r"[^A-Za-z0-9_-]", "-", f"{shard}_{replica}")


def position_file(copy: Path) -> Path:
    """Where a copy's position is kept: beside its directory (never inside, where a
    build or a restore replaces files)."""
    return copy.with_name(copy.name + _POSITION_SUFFIX)


class ShardLog:
    """One shard's index stream as one replica reads it: :meth:`catch_up`, then
    :meth:`follow` for good; :meth:`wait_for` a version from a search."""

    def __init__(self, nc: NATS, subjects: Subjects, shard: str, replica: str, copy: Path,
                 apply: Apply, *, batch: int, lag: LagMetrics, log: Any) -> None:
        self.nc = nc
        self.shard = shard
        self.replica = replica
        self.stream = subjects.index_stream
        self.subject = subjects.index_log(shard)
        self.base = consumer_name(shard, replica)
        self.consumer = self.base  # the one in use: base + a suffix per subscription
        self.path = position_file(copy)
        self.batch = batch
        self.lag = lag
        self.log = log.bind(shard=shard, replica=replica)
        self._apply = apply
        self.applied = 0
        #: updates applied by this process (a restart replays only what it missed)
        self.applied_updates = 0
        #: the position :meth:`catch_up` started from (after any snapshot was restored)
        self.caught_up_from = 0
        self.stream_id = ""
        self.pending = 0
        self._sub: Any = None
        self._expected = 1
        self._progress = anyio.Event()
        #: a snapshot or a restore replacing the copy holds this (no batch applies meanwhile)
        self.lock = anyio.Lock()

    # -- position ------------------------------------------------------------------------

    async def open(self) -> None:
        """Read the position; one of another stream (deleted and made again) counts as
        none, so the whole stream applies on top of what the copy holds."""
        js = self.nc.jetstream()
        info = await through_elections(lambda: js.stream_info(self.stream))
        self.stream_id = str(info.created or "")
        kept = self._read()
        if kept.stream and kept.stream != self.stream_id:
            self.log.warning("replica.position_of_another_stream", seq=kept.seq)
            kept = Position()
        self.applied = kept.seq
        self.lag.applied.set(self.applied)
        await self._forget_earlier()

    def _read(self) -> Position:
        try:
            return msgspec.json.decode(self.path.read_bytes(), type=Position)
        except FileNotFoundError:
            return Position()
        except (OSError, msgspec.DecodeError) as exc:
            self.log.error("replica.position_unreadable", path=str(self.path), error=str(exc))
            return Position()

    def _write(self) -> None:
        """Replace the position file (write aside, then rename: never half written)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_bytes(msgspec.json.encode(Position(seq=self.applied, stream=self.stream_id)))
        os.replace(tmp, self.path)

    def moved_to(self, seq: int) -> None:
        """The copy was replaced by one holding the updates up to ``seq`` (a snapshot, a
        restored backup): follow from there. Call holding :attr:`lock`."""
        self.applied = seq
        self._write()
        self._sub = None  # the next step recreates the consumer from here
        self.lag.applied.set(seq)
        self._notify()

    # -- consuming -----------------------------------------------------------------------

    async def _subscribe(self) -> None:
        """Create a consumer for this replica at the position, then bind to it.

        Each one gets a new name (``apply_<shard>_<replica>_<n>``): deleting the previous
        one can wait out a consumer's own leader election (measured: 5 s timeouts over and
        over after a stream leader's kill -9), so it is only asked to go, briefly, and is
        otherwise removed by the server once idle (``_CONSUMER_IDLE_S``).
        """
        js = self.nc.jetstream()
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
            await self._forget(self.consumer)
        name = f"{self.base}_{secrets.token_hex(3)}"
        await js.add_consumer(self.stream, ConsumerConfig(
            durable_name=name, filter_subject=self.subject,
            description=f"ragbus shard {self.shard} replica {self.replica}",
            ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.applied + 1, inactive_threshold=_CONSUMER_IDLE_S))
        self.consumer = name
        self._sub = await js.pull_subscribe_bind(durable=name, stream=self.stream)
        self._expected = 1

    async def _forget(self, name: str) -> None:
        """Ask the server to delete consumer ``name`` (best effort, briefly)."""
        with anyio.move_on_after(2), contextlib.suppress(Exception):
            await self.nc.jetstream().delete_consumer(self.stream, name)

    async def _forget_earlier(self) -> None:
        """Delete what an earlier run of this replica left (a kill -9 leaves its consumer
        until it idles out)."""
        with anyio.move_on_after(5), contextlib.suppress(Exception):
            for info in await self.nc.jetstream().consumers_info(self.stream):
                if (info.name or "").startswith(self.base + "_") and info.config.description \
                        == f"ragbus shard {self.shard} replica {self.replica}":
                    await self._forget(info.name or "")

    async def step(self, timeout_s: float) -> int:
        """Fetch one batch and apply it in order; the updates applied (0: none arrived)."""
        if self._sub is None:
            await self._subscribe()
        try:
            msgs = await self._sub.fetch(self.batch, timeout=timeout_s)
        # nats-py raises its TimeoutError, or asyncio's bare one when the fetch's time
        # runs out before its last pull request: both are "nothing came"
        except TimeoutError:
            return 0
        applied = 0
        async with self.lock:
            try:
                for msg in msgs:
                    meta = msg.metadata
                    if meta.sequence.consumer != self._expected:
                        # a delivery went missing (the connection dropped, a leader moved):
                        # start again from the position, so nothing applies out of order
                        self.log.warning("replica.delivery_missed", expected=self._expected,
                                         got=meta.sequence.consumer)
                        self._sub = None
                        break
                    self._expected += 1
                    self.pending = meta.num_pending
                    seq = meta.sequence.stream
                    if seq <= self.applied:
                        continue  # applied before the consumer was recreated
                    try:
                        update = _DECODER.decode(msg.data)
                    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                        # no replica can ever apply it; skipping it keeps them all equal
                        self.log.error("replica.update_unreadable", seq=seq, error=str(exc))
                    else:
                        await self._apply(update)
                    self.applied = seq
                    self.applied_updates += 1
                    applied += 1
                    if meta.timestamp is not None:
                        delay = max(0.0, time.time() - meta.timestamp.timestamp())
                        self.lag.delay.observe(delay)
                        self.lag.seconds.set(delay if self.pending else 0.0)
            finally:
                if applied:
                    self._write()
                    self.lag.applied.set(self.applied)
                    self.lag.messages.set(self.pending)
                    self._notify()
        return applied

    async def caught_up(self, *, idle: bool = False) -> bool:
        """Every update of the shard stored so far is applied (asks the consumer).

        ``idle``: no fetch is in progress, so a delivery the consumer made and this
        replica never applied was lost on the way: the consumer is recreated.
        """
        if self._sub is None:
            return False
        info = await self.nc.jetstream().consumer_info(self.stream, self.consumer)
        self.pending = info.num_pending or 0
        self.lag.messages.set(self.pending)
        if not self.pending:
            self.lag.seconds.set(0.0)
        delivered = info.delivered.stream_seq if info.delivered else 0
        if (delivered or 0) > self.applied:
            if idle:  # delivered and never seen here: lost on the way
                self.log.warning("replica.delivery_lost", delivered=delivered,
                                 applied=self.applied)
                self._sub = None
            return False
        return self.pending == 0

    async def catch_up(self) -> None:
        """Apply until nothing is pending: a replica joins its shard's searches after."""
        started, before = time.monotonic(), self.applied
        self.caught_up_from = before
        if self._sub is None:
            await self._subscribe()
        while not await self.caught_up(idle=True):
            await self.step(timeout_s=0.5)
        self.log.info("replica.caught_up", applied=self.applied, replayed_from=before,
                      seconds=round(time.monotonic() - started, 3))

    async def follow(self) -> None:
        """Apply updates as they are stored, for good. A failure (the bus reconnecting, a
        leader moving, the store refusing a write) starts again from the position after
        a pause; nothing is skipped."""
        checked = time.monotonic()
        while True:
            try:
                if await self.step(timeout_s=1.0) == 0 and \
                        time.monotonic() - checked >= _CHECK_IDLE_S:
                    checked = time.monotonic()
                    await self.caught_up(idle=True)
            except Exception as exc:
                self.log.warning("replica.apply_failed", applied=self.applied, error=repr(exc),
                                 exc_info=True)
                self._sub = None
                await anyio.sleep(1.0)

    # -- read-your-writes ----------------------------------------------------------------

    def _notify(self) -> None:
        self._progress.set()
        self._progress = anyio.Event()

    async def reached(self, version: int) -> bool:
        """Every update of the shard stored up to stream sequence ``version`` is applied:
        the position is there, or nothing of the shard is left to apply at all (the
        sequence may be another shard's)."""
        if self.applied >= version:
            return True
        try:
            return await self.caught_up()
        except Exception:  # the consumer is being recreated: not known to be there yet
            return False

    async def wait_for(self, version: int) -> None:
        """Return once :meth:`reached` (the caller's deadline bounds the wait)."""
        while not await self.reached(version):
            progressed = self._progress
            with anyio.move_on_after(0.5):
                await progressed.wait()
