"""``ragbus cache stats|purge``: the shared caches are KV buckets, shown and emptied."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import anyio

from ragbus.runtime import ensure_kv
from ragbus.runtime.connection import NATS
from ragbus.subjects import Subjects, retrieval_cache_bucket
from tests.support.cli import RAGBUS


async def test_cache_stats_and_purge(nats_url: str, nc: NATS, tmp_path: Path) -> None:
    kv = await ensure_kv(nc, retrieval_cache_bucket(Subjects()))
    await kv.put("k1", b"v")
    await kv.put("k2", b"v")
    env = {**os.environ, "RAGBUS_NATS__URL": nats_url, "COLUMNS": "200"}

    def cli(*args: str) -> str:
        done = subprocess.run([*RAGBUS, "cache", *args],
                              cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=60, check=True)
        return done.stdout

    stats = await anyio.to_thread.run_sync(cli, "stats")
    row = next(line for line in stats.splitlines() if "rag_retrieval" in line)
    assert row.split("│")[3].strip() == "2"
    assert "not created yet" in next(line for line in stats.splitlines() if "answers" in line)
    purged = await anyio.to_thread.run_sync(cli, "purge", "retrieval")
    row = next(line for line in purged.splitlines() if "rag_retrieval" in line)
    assert row.split("│")[3].strip() == "0"
