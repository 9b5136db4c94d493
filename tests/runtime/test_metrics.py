"""Every actor's traffic is visible on the Prometheus endpoint."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest

from ragbus.config import NatsSettings, Settings
from ragbus.runtime import BadRequestError, Client, Metrics
from ragbus.runtime.cli import EmbeddedNats
from ragbus.runtime.connection import NATS
from ragbus.subjects import Subjects
from tests.support import Echo, Ping, Pong, free_port, running
from tests.support.echo import echo_subject


async def test_metrics_count_messages_errors_latency_and_inflight(
    nats_url: str, nc: NATS
) -> None:
    metrics = Metrics()
    port, close = metrics.serve("127.0.0.1", 0)
    try:
        settings = Settings(nats=NatsSettings(url=nats_url))
        async with running(Echo(settings, metrics=metrics)):
            client = Client(nc)
            for _ in range(3):
                await client.request(echo_subject(Subjects()), Ping(), Pong)
            with pytest.raises(BadRequestError):
                await client.request(echo_subject(Subjects()), Ping(fail="bad_request"), Pong)
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    finally:
        close()
    assert 'ragbus_messages_total{actor="echo",endpoint="ping"} 4.0' in text
    assert 'ragbus_errors_total{actor="echo",code="BAD_REQUEST",endpoint="ping"} 1.0' in text
    assert 'ragbus_handler_seconds_count{actor="echo",endpoint="ping"} 4.0' in text
    assert 'ragbus_inflight{actor="echo"} 0.0' in text


async def test_each_actors_nats_connection_is_exported_with_its_reconnects(
    tmp_path: Path,
) -> None:
    """The server stops under a serving actor and comes back on the same port: the
    actor's connection shows down, then up with one reconnect."""
    metrics = Metrics()
    server = EmbeddedNats(tmp_path, port=free_port())
    await server.start()
    settings = Settings(nats=NatsSettings(url=server.url, reconnect_time_wait_s=0.1,
                                          max_reconnect_attempts=600))

    async def until(wanted: tuple[float, float], timeout_s: float) -> None:
        with anyio.fail_after(timeout_s):
            while state() != wanted:  # noqa: ASYNC110 (a scrape has no event to wait on)
                await anyio.sleep(0.05)

    def state() -> tuple[float | None, float | None]:
        labels = {"actor": "echo"}
        return (metrics.registry.get_sample_value("ragbus_nats_connected", labels),
                metrics.registry.get_sample_value("ragbus_nats_reconnects_total", labels))

    try:
        async with running(Echo(settings, metrics=metrics)):
            assert state() == (1.0, 0.0)
            await server.stop()
            await until((0.0, 0.0), 10)
            await server.start()
            await until((1.0, 1.0), 20)
    finally:
        await server.stop()


def test_a_metrics_port_already_taken_is_replaced_by_a_free_one_and_said() -> None:
    """``ragbus actor router --replicas 2`` beside ``ragbus up`` on one host used to
    crash-loop on "Address already in use"."""
    import io
    import json
    import socket
    import urllib.request

    from ragbus.config import LoggingSettings
    from ragbus.runtime import configure_logging

    stream = io.StringIO()
    configure_logging(LoggingSettings(format="json"), stream=stream)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        serving, close = Metrics().serve("127.0.0.1", port)
        try:
            assert serving not in (port, 0)
            with urllib.request.urlopen(f"http://127.0.0.1:{serving}/metrics", timeout=5) as r:
                assert r.status == 200
        finally:
            close()
    warning = json.loads(stream.getvalue().splitlines()[-1])
    assert warning["event"] == "metrics.port_in_use"
    assert (warning["wanted"], warning["serving_on"]) == (port, serving)
