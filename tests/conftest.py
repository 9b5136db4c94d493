"""Fixtures: a real nats-server per test on a free loopback port."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterator

import pytest
import structlog

from ragbus.config import NatsSettings, RuntimeSettings, Settings
from ragbus.runtime import connect
from ragbus.runtime.cli import EmbeddedCluster, EmbeddedNats
from ragbus.runtime.connection import NATS

# before any test module imports onnxruntime (qdrant-client and fastembed do)
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


@pytest.fixture
async def nats_server() -> AsyncIterator[EmbeddedNats]:
    async with EmbeddedNats() as server:
        yield server


@pytest.fixture
async def nats_cluster() -> AsyncIterator[EmbeddedCluster]:
    """Three nats-server nodes clustered on loopback, JetStream on each (~5 s to elect)."""
    async with EmbeddedCluster(3) as cluster:
        yield cluster


@pytest.fixture
def nats_url(nats_server: EmbeddedNats) -> str:
    return nats_server.url


@pytest.fixture
def settings(nats_url: str) -> Settings:
    return Settings(
        nats=NatsSettings(url=nats_url, max_reconnect_attempts=2, reconnect_time_wait_s=0.1),
        runtime=RuntimeSettings(concurrency=8, default_timeout_s=5.0, drain_grace_s=2.0),
    )


@pytest.fixture
async def nc(settings: Settings) -> AsyncIterator[NATS]:
    conn = await connect(settings.nats, name="test-client")
    yield conn
    await conn.close()


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """A test that configures logging to a capture stream must not leak it into the next
    (structlog's, and the root handler that routes the libraries' records)."""
    structlog.reset_defaults()
    yield
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == "ragbus"]:
        root.removeHandler(handler)
