"""Idempotent JetStream set-up: every actor declares what it needs at start.

Starting twice, or starting replicas at once, must never fail, so "already
exists" is success and a changed configuration is applied as an update.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

import anyio
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import ConnectionReconnectingError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    PubAck,
    StreamConfig,
)
from nats.js.errors import (
    BadRequestError,
    BucketNotFoundError,
    NoStreamResponseError,
    NotFoundError,
    ServiceUnavailableError,
)
from nats.js.kv import KV_DEL, KV_MARKER_REASON, KV_OP, KV_PURGE, KeyValue
from nats.js.object_store import ObjectStore

from ragbus.subjects import IndexUpdate, Subjects

from .codec import encode

__all__ = ("CACHE_WAIT_S", "TRANSIENT", "ElectionProofKV", "best_effort", "ensure_kv",
           "ensure_object_store", "ensure_stream", "kv_entries", "publish_once",
           "read_stream", "store_index_update", "through_elections")

MSG_ID = "Nats-Msg-Id"
_EXISTS = 10058  # JetStream API error code: stream name already in use
_READ_BATCH = 256
_READ_TIMEOUT_S = 5.0
_READER_IDLE_S = 30.0  # the server removes a reader its client never deleted


async def ensure_stream(nc: NATS, config: StreamConfig, *, replicas: int = 1) -> None:
    """Create the stream, or update it to ``config`` if it exists; ``replicas`` copies of
    it on a cluster (an existing stream with fewer is raised: JetStream scales it; one
    with more keeps them). Retried through a cluster's elections."""
    await through_elections(lambda: _ensure_stream(nc, config, replicas))


async def _ensure_stream(nc: NATS, config: StreamConfig, replicas: int) -> None:
    js = nc.jetstream()
    name = config.name
    assert name is not None
    config = dataclasses.replace(config, num_replicas=replicas)
    try:
        info = await js.stream_info(name)
    except NotFoundError:
        try:
            await js.add_stream(config)
            return
        except BadRequestError as exc:
            if exc.err_code != _EXISTS:
                raise
        info = await js.stream_info(name)
    # never fewer copies than it has: a process started with the default must not shrink
    # what a cluster's actors raised
    kept = max(replicas, info.config.num_replicas or 1)
    await js.update_stream(dataclasses.replace(config, num_replicas=kept))


async def ensure_kv(nc: NATS, config: KeyValueConfig, *, replicas: int = 1) -> KeyValue:
    """Open the bucket, creating it first if no one has; ``replicas`` copies of it on a
    cluster (an existing bucket with fewer is raised). Retried through elections."""
    kv = await through_elections(lambda: _ensure_kv(nc, config, replicas))
    return ElectionProofKV(name=kv._name, stream=kv._stream, pre=kv._pre, js=kv._js,
                           direct=kv._direct)


async def _ensure_kv(nc: NATS, config: KeyValueConfig, replicas: int) -> KeyValue:
    js = nc.jetstream()
    try:
        kv = await js.key_value(config.bucket)
    except BucketNotFoundError:
        try:
            return await js.create_key_value(dataclasses.replace(config, replicas=replicas))
        except BadRequestError as exc:
            if exc.err_code != _EXISTS:
                raise
            kv = await js.key_value(config.bucket)
    stream = f"KV_{config.bucket}"
    info = await js.stream_info(stream)
    if (info.config.num_replicas or 1) < replicas:
        await js.update_stream(dataclasses.replace(info.config, num_replicas=replicas))
    return kv


async def ensure_object_store(nc: NATS, config: ObjectStoreConfig, *,
                              replicas: int = 1) -> ObjectStore:
    """Open the object store, creating it first if no one has; ``replicas`` copies of it
    on a cluster (an existing one with fewer is raised). Retried through elections."""
    return await through_elections(lambda: _ensure_object_store(nc, config, replicas))


async def _ensure_object_store(nc: NATS, config: ObjectStoreConfig,
                               replicas: int) -> ObjectStore:
    js = nc.jetstream()
    bucket = config.bucket
    assert bucket is not None
    stream = f"OBJ_{bucket}"
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        try:
            # nats-py overwrites the config's bucket with its first argument
            return await js.create_object_store(
                bucket, dataclasses.replace(config, replicas=replicas))
        except BadRequestError as exc:
            if exc.err_code != _EXISTS:
                raise
        info = await js.stream_info(stream)
    if (info.config.num_replicas or 1) < replicas:
        await js.update_stream(dataclasses.replace(info.config, num_replicas=replicas))
    return ObjectStore(name=bucket, stream=stream, js=js)


async def kv_entries(kv: KeyValue, pattern: str = ">") -> list[KeyValue.Entry]:
    """Current values of the keys matching ``pattern``: one consumer, not N gets.

    Not ``kv.watch()``: its end-of-initial-values marker is decided from a consumer
    info taken while the server may already be pushing, so now and then it reports
    an empty bucket that is not. A pull consumer sends nothing before it is asked,
    so its pending count is exact, and each message's own pending count says when
    the last stored value has arrived.
    """
    js, stream = kv._js, kv._stream  # nats-py keeps them private; names per ADR-8
    name = f"kv_read_{secrets.token_hex(8)}"
    await js.add_consumer(stream, ConsumerConfig(
        name=name, filter_subject=f"{kv._pre}{pattern}",
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT, ack_policy=AckPolicy.NONE,
        mem_storage=True, inactive_threshold=_READER_IDLE_S))
    sub = await js.pull_subscribe_bind(consumer=name, stream=stream)
    entries: list[KeyValue.Entry] = []
    try:
        pending = (await sub.consumer_info()).num_pending or 0
        while pending:
            for msg in await sub.fetch(min(pending, _READ_BATCH), timeout=_READ_TIMEOUT_S):
                meta = msg.metadata
                pending = meta.num_pending
                if _removed(msg.headers):
                    continue
                entries.append(KeyValue.Entry(
                    bucket=kv._name,
                    key=msg.subject[len(kv._pre):],
                    value=msg.data, revision=meta.sequence.stream, delta=meta.num_pending,
                    created=None, operation=None,
                ))
    finally:
        await sub.unsubscribe()
        with contextlib.suppress(NotFoundError):  # else it lingers until it idles out
            await js.delete_consumer(stream, name)
    return entries


async def read_stream(nc: NATS, stream: str, *, filter_subject: str,
                      since_ms: int | None = None) -> AsyncIterator[Msg]:
    """Every message of ``stream`` on ``filter_subject`` stored from ``since_ms`` (epoch ms;
    None: all of them) up to the newest there when reading began, oldest first.

    Its own ephemeral pull consumer, as ``kv_entries``: nothing is acknowledged, nobody
    else's position moves, and each message's pending count says when the end is reached.
    """
    js = nc.jetstream()
    name = f"read_{secrets.token_hex(8)}"
    start = None if since_ms is None else datetime.fromtimestamp(since_ms / 1000, UTC)
    await js.add_consumer(stream, ConsumerConfig(
        name=name, filter_subject=filter_subject, ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.ALL if start is None else DeliverPolicy.BY_START_TIME,
        opt_start_time=start, mem_storage=True, inactive_threshold=_READER_IDLE_S))
    sub = await js.pull_subscribe_bind(consumer=name, stream=stream)
    try:
        pending = (await sub.consumer_info()).num_pending or 0
        while pending:
            for msg in await sub.fetch(min(pending, _READ_BATCH), timeout=_READ_TIMEOUT_S):
                pending = msg.metadata.num_pending
                yield msg
    finally:
        with anyio.CancelScope(shield=True):
            await sub.unsubscribe()
            with contextlib.suppress(NotFoundError):  # else it lingers until it idles out
                await js.delete_consumer(stream, name)


def _removed(headers: dict[str, str] | None) -> bool:
    """A delete or purge tombstone, or a server marker for an expired key."""
    if not headers:
        return False
    return headers.get(KV_OP) in (KV_DEL, KV_PURGE) or KV_MARKER_REASON in headers


#: what a cluster answers while it elects a leader (4-6 s measured here): worth a retry
TRANSIENT: tuple[type[Exception], ...] = (
    NatsTimeoutError, NoRespondersError, NoStreamResponseError, ServiceUnavailableError,
    ConnectionReconnectingError)

T = TypeVar("T")


async def through_elections(op: Callable[[], Awaitable[T]], *, within_s: float = 20.0) -> T:
    """``op()``, retried with backoff while the cluster elects a leader (a stream's or the
    meta group's), for up to ``within_s``: what a node's death looks like to a client."""
    give_up = anyio.current_time() + within_s
    wait = 0.25
    while True:
        try:
            return await op()
        except TRANSIENT:
            if anyio.current_time() + wait > give_up:
                raise
            await anyio.sleep(wait)
            wait = min(2.0, wait * 2)


class ElectionProofKV(KeyValue):
    """A bucket whose reads and writes wait out a leader election (up to 20 s) instead of
    failing the request that made them: on a cluster, a node's death must not turn a
    query or an ingest into an INTERNAL error. A retried write is the same write: ``put``
    is idempotent, and a stored-but-unacknowledged ``create``/``update`` comes back as the
    revision conflict its caller already handles. Watches are left as they are."""

    async def get(self, key: str, revision: int | None = None,
                  validate_keys: bool = True) -> KeyValue.Entry:
        return await through_elections(lambda: super(ElectionProofKV, self).get(
            key, revision, validate_keys))

    async def put(self, key: str, value: bytes, validate_keys: bool = True) -> int:
        return await through_elections(lambda: super(ElectionProofKV, self).put(
            key, value, validate_keys))

    async def create(self, key: str, value: bytes, validate_keys: bool = True,
                     msg_ttl: float | None = None) -> int:
        return await through_elections(lambda: super(ElectionProofKV, self).create(
            key, value, validate_keys, msg_ttl))

    async def update(self, key: str, value: bytes, last: int | None = None,
                     validate_keys: bool = True) -> int:
        return await through_elections(lambda: super(ElectionProofKV, self).update(
            key, value, last, validate_keys))

    async def delete(self, key: str, last: int | None = None, validate_keys: bool = True,
                     msg_ttl: float | None = None) -> bool:
        return await through_elections(lambda: super(ElectionProofKV, self).delete(
            key, last, validate_keys, msg_ttl))

    async def purge(self, key: str, msg_ttl: float | None = None) -> bool:
        return await through_elections(lambda: super(ElectionProofKV, self).purge(
            key, msg_ttl))


async def publish_once(nc: NATS, subject: str, data: bytes, *, msg_id: str,
                       within_s: float = 20.0, timeout_s: float = 2.0,
                       headers: dict[str, str] | None = None) -> PubAck:
    """Store ``data`` in the stream on ``subject`` exactly once, retrying through elections.

    The retry carries the same ``Nats-Msg-Id``, so a first attempt that was stored after
    all is not stored twice (JetStream drops a repeat within the duplicate window).
    """
    js = nc.jetstream()
    return await through_elections(lambda: js.publish(
        subject, data, timeout=timeout_s, headers={**(headers or {}), MSG_ID: msg_id}),
        within_s=within_s)


async def store_index_update(nc: NATS, subjects: Subjects, update: IndexUpdate) -> int:
    """Store ``update`` in the index stream once, on its shard's subject; its sequence.

    Its request id is its ``Nats-Msg-Id``, so a publish retried through an election is
    stored once. Stored is done for the writer: each replica of the shard applies the
    stream in order at its own pace (``Query.min_corpus_version`` waits for it).
    """
    ack = await publish_once(nc, subjects.index_log(update.collection), encode(update),
                             msg_id=update.request_id)
    return ack.seq


#: how long a cache may take before the request goes on without it
CACHE_WAIT_S = 1.0


async def best_effort(op: Callable[[], Awaitable[T]], *,
                      within_s: float = CACHE_WAIT_S) -> T | None:
    """``op()`` if the bus answers within ``within_s``, else None.

    For what only speeds a request up (a cache read or write): while a cluster elects a
    leader such a call would wait 5 s and then fail, holding the request hostage or
    failing it with INTERNAL; without its cache the request is merely slower.
    """
    with anyio.move_on_after(within_s):
        try:
            return await op()
        except TRANSIENT:
            return None
    return None
