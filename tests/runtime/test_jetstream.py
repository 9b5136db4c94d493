"""Reading a KV bucket's current values: exact, never a premature "empty"."""

from __future__ import annotations

from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig

from ragbus.runtime import ensure_kv, kv_entries


async def test_kv_entries_returns_the_latest_value_of_each_live_key(nc: NATS) -> None:
    kv = await ensure_kv(nc, KeyValueConfig(bucket="things", history=5))
    await kv.put("a.1", b"old")
    await kv.put("a.1", b"new")
    await kv.put("a.2", b"two")
    await kv.put("b.1", b"other")
    await kv.put("gone", b"x")
    await kv.delete("gone")
    await kv.put("purged", b"x")
    await kv.purge("purged")

    entries = await kv_entries(kv)
    assert sorted((e.key, e.value) for e in entries) == [
        ("a.1", b"new"), ("a.2", b"two"), ("b.1", b"other")]
    assert {e.key: e.revision for e in entries}["a.1"] == 2
    assert sorted(e.key for e in await kv_entries(kv, "a.>")) == ["a.1", "a.2"]


async def test_kv_entries_of_an_empty_bucket_is_empty(nc: NATS) -> None:
    kv = await ensure_kv(nc, KeyValueConfig(bucket="nothing"))
    assert await kv_entries(kv) == []
    await kv.put("k", b"v")
    await kv.delete("k")
    assert await kv_entries(kv) == []


async def test_a_value_just_written_is_always_read_back(nc: NATS) -> None:
    """nats-py's watcher reported an empty bucket about once in 1,500 such reads."""
    kv = await ensure_kv(nc, KeyValueConfig(bucket="fresh"))
    for i in range(1500):
        await kv.put(f"k{i % 3}", b"x")
        assert await kv_entries(kv), f"read {i} missed a stored value"


async def test_kv_entries_reads_past_one_batch(nc: NATS) -> None:
    kv = await ensure_kv(nc, KeyValueConfig(bucket="many"))
    for i in range(600):
        await kv.put(f"doc.{i}", str(i).encode())
    entries = await kv_entries(kv)
    assert sorted(int(e.value) for e in entries) == list(range(600))
