"""Every actor's traffic is visible on the Prometheus endpoint."""

from __future__ import annotations

import httpx
import pytest

from ragbus.config import NatsSettings, Settings
from ragbus.runtime import BadRequestError, Client, Metrics
from ragbus.runtime.connection import NATS
from ragbus.subjects import Subjects
from tests.support import Echo, Ping, Pong, running
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
