"""Idempotent JetStream set-up: every actor declares what it needs at start.

Starting twice, or starting replicas at once, must never fail, so "already
exists" is success and a changed configuration is applied as an update.
"""

from __future__ import annotations

import contextlib
import secrets

from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, KeyValueConfig, StreamConfig
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError
from nats.js.kv import KV_DEL, KV_MARKER_REASON, KV_OP, KV_PURGE, KeyValue

__all__ = ("ensure_kv", "ensure_stream", "kv_entries")

_EXISTS = 10058  # JetStream API error code: stream name already in use
_READ_BATCH = 256
_READ_TIMEOUT_S = 5.0
_READER_IDLE_S = 30.0  # the server removes a reader its client never deleted


async def ensure_stream(nc: NATS, config: StreamConfig) -> None:
    """Create the stream, or update it to ``config`` if it exists."""
    js = nc.jetstream()
    assert config.name is not None
    try:
        await js.stream_info(config.name)
    except NotFoundError:
        try:
            await js.add_stream(config)
            return
        except BadRequestError as exc:
            if exc.err_code != _EXISTS:
                raise
    await js.update_stream(config)


async def ensure_kv(nc: NATS, config: KeyValueConfig) -> KeyValue:
    """Open the bucket, creating it first if no one has."""
    js = nc.jetstream()
    try:
        return await js.key_value(config.bucket)
    except BucketNotFoundError:
        pass
    try:
        return await js.create_key_value(config)
    except BadRequestError as exc:
        if exc.err_code != _EXISTS:
            raise
        return await js.key_value(config.bucket)


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


def _removed(headers: dict[str, str] | None) -> bool:
    """A delete or purge tombstone, or a server marker for an expired key."""
    if not headers:
        return False
    return headers.get(KV_OP) in (KV_DEL, KV_PURGE) or KV_MARKER_REASON in headers
