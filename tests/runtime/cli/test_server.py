"""The embedded nats-server: private, loopback, JetStream, and durable when asked."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import anyio
import nats
import pytest
from nats.js.api import KeyValueConfig, RetentionPolicy, StreamConfig

from ragbus.config import ROLES
from ragbus.runtime import ensure_kv, ensure_stream
from ragbus.runtime.cli import EmbeddedNats, NatsServerError, find_nats_server

REPO = Path(__file__).resolve().parents[3]


async def test_embedded_server_listens_on_loopback_with_jetstream() -> None:
    async with EmbeddedNats() as server:
        assert server.url.startswith("nats://127.0.0.1:")
        nc = await nats.connect(server.url)
        try:
            info = await nc.jetstream().account_info()
            assert info.limits is not None
        finally:
            await nc.close()


async def test_two_embedded_servers_do_not_collide() -> None:
    async with EmbeddedNats() as a, EmbeddedNats() as b:
        assert a.url != b.url


async def test_data_dir_keeps_jetstream_state_across_restarts(tmp_path: Path) -> None:
    async with EmbeddedNats(tmp_path) as server:
        nc = await nats.connect(server.url)
        kv = await ensure_kv(nc, KeyValueConfig(bucket="durable"))
        await kv.put("k", b"kept")
        await nc.close()
    async with EmbeddedNats(tmp_path) as server:
        nc = await nats.connect(server.url)
        kv = await ensure_kv(nc, KeyValueConfig(bucket="durable"))
        entry = await kv.get("k")
        await nc.close()
    assert entry.value == b"kept"


async def test_ephemeral_server_leaves_nothing_behind() -> None:
    async with EmbeddedNats() as server:
        root = server.data_dir
        assert root.exists()
    assert not root.exists()


async def test_a_server_that_cannot_start_says_why(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises((NatsServerError, OSError)):
        await EmbeddedNats(blocker / "sub").start()


async def test_jetstream_setup_is_idempotent_even_when_concurrent(
    nats_url: str,
) -> None:
    conns = [await nats.connect(nats_url) for _ in range(3)]
    stream = StreamConfig(name="WORK", subjects=["work.>"],
                          retention=RetentionPolicy.WORK_QUEUE)
    try:
        for _ in range(2):  # starting twice ...
            async with anyio.create_task_group() as tg:  # ... and replicas at once
                for nc in conns:
                    tg.start_soon(ensure_stream, nc, stream)
                    tg.start_soon(ensure_kv, nc, KeyValueConfig(bucket="jobs", history=1))
        # a changed configuration is applied, not refused
        await ensure_stream(conns[0], StreamConfig(name="WORK", subjects=["work.>", "more.>"],
                                                   retention=RetentionPolicy.WORK_QUEUE))
        info = await conns[0].jetstream().stream_info("WORK")
        assert info.config.subjects == ["work.>", "more.>"]
    finally:
        for nc in conns:
            await nc.close()


def test_shipped_nats_server_conf_is_valid() -> None:
    # role passwords are $RAGBUS_SECURITY__<ROLE>_PASSWORD references, resolved at start
    env = {**os.environ, **{f"RAGBUS_SECURITY__{role.upper()}_PASSWORD": "placeholder"
                            for role in ROLES}}
    result = subprocess.run([find_nats_server(), "-t", "-c", str(REPO / "nats-server.conf")],
                            capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
