"""Idempotent JetStream set-up: every actor declares what it needs at start.

Starting twice, or starting replicas at once, must never fail, so "already
exists" is success and a changed configuration is applied as an update.
"""

from __future__ import annotations

from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig, StreamConfig
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

__all__ = ("ensure_kv", "ensure_stream", "kv_entries")

_EXISTS = 10058  # JetStream API error code: stream name already in use


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
    """Current values of the keys matching ``pattern``: one ordered consumer, not N gets."""
    watcher = await kv.watch(pattern, ignore_deletes=True)
    entries: list[KeyValue.Entry] = []
    try:
        async for entry in watcher:
            if entry is None:  # the end of what is stored
                break
            if entry.value is not None:
                entries.append(entry)
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
    return entries
