"""``ragbus health NAME``: the container health check, against real actors and servers."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import anyio
import anyio.to_thread
import msgspec
import pytest

from ragbus.actors.bridge import Bridge
from ragbus.actors.trimmer import ContextTrimmer
from ragbus.config import BridgeSettings, MetricsSettings, NatsSettings, Settings
from ragbus.runtime import Metrics
from ragbus.runtime.cli import EmbeddedNats
from ragbus.runtime.cli._health import probe
from tests.support import free_port, running
from tests.support.cli import RAGBUS


def _settings(url: str, metrics_port: int, **changes: object) -> Settings:
    return Settings(nats=NatsSettings(url=url, reconnect_time_wait_s=0.1),
                    metrics=MetricsSettings(host="0.0.0.0", port=metrics_port),  # as compose
                    **changes)  # type: ignore[arg-type]


async def poll(settings: Settings, name: str, *, healthy: bool) -> list[str]:
    """Probe until the answer is the one wanted, for up to 10 s (``/readyz`` keeps an
    answer for a second; a lost connection is noticed within moments)."""
    problems: list[str] = []
    for _ in range(100):
        problems = await anyio.to_thread.run_sync(probe, settings, name)
        if (problems == []) == healthy:
            break
        await anyio.sleep(0.1)
    return problems


async def test_healthy_while_serving_and_connected_unhealthy_once_nats_is_gone(
    tmp_path: Path,
) -> None:
    server = EmbeddedNats(tmp_path)
    url = await server.start()
    port = free_port()
    settings = _settings(url, port)
    metrics = Metrics()
    _, close = metrics.serve("127.0.0.1", port)
    try:
        async with running(ContextTrimmer(settings, metrics=metrics)):
            healthy = await anyio.to_thread.run_sync(probe, settings, "context-trimmer")
            other = await anyio.to_thread.run_sync(probe, settings, "router")
            two = await anyio.to_thread.run_sync(
                lambda: probe(settings, "context-trimmer", replicas=2))
            await server.stop()
            gone = await poll(settings, "context-trimmer", healthy=False)
    finally:
        close()
        await server.stop()
    assert healthy == []
    assert other == [f"http://127.0.0.1:{port}/metrics: no actor 'router' runs in this process"]
    assert len(two) == 1  # the second replica's port: nothing listens there
    assert f":{port + 1}/metrics" in two[0]
    assert gone == [f"http://127.0.0.1:{port}/metrics: context-trimmer is not connected to NATS"]


async def test_the_bridge_is_healthy_only_when_readyz_says_ready(nats_url: str) -> None:
    port = free_port()
    bridge = BridgeSettings(port=free_port(), ready_actors=["context-trimmer"])
    settings = _settings(nats_url, port, bridge=bridge)
    metrics = Metrics()
    _, close = metrics.serve("127.0.0.1", port)
    try:
        async with running(Bridge(settings, metrics=metrics)):
            # no context-trimmer answers $SRV.PING yet: connected, but not ready
            waiting = await anyio.to_thread.run_sync(probe, settings, "bridge")
            trimmer = msgspec.structs.replace(settings, metrics=MetricsSettings(enabled=False))
            async with running(ContextTrimmer(trimmer)):
                ready = await poll(settings, "bridge", healthy=True)
    finally:
        close()
    assert len(waiting) == 1
    assert "/readyz: 503" in waiting[0]
    assert ready == []


@pytest.mark.parametrize(("name", "code"), [("embedder", 1), ("no-such-actor", 2)])
def test_the_command_exits_non_zero_with_the_reason(name: str, code: int, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGBUS_")}
    env.update(RAGBUS_METRICS__PORT=str(free_port()), RAGBUS_ENVIRONMENT="production")
    done = subprocess.run([*RAGBUS, "health", name], cwd=tmp_path, env=env, text=True,
                          capture_output=True, timeout=60)
    assert done.returncode == code, done.stdout + done.stderr
    assert ("Connect" in done.stderr) if code == 1 else ("no actor named" in done.stderr)
