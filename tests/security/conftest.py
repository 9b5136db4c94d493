"""A real nats-server started with the generated least-privilege configuration."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ragbus.config import Settings
from ragbus.runtime.cli import EmbeddedNats
from ragbus.runtime.security import write_server_include
from tests.security._roles import SECURITY


@pytest.fixture
async def secure_url(tmp_path: Path) -> AsyncIterator[str]:
    include = write_server_include(tmp_path / "auth" / "users.conf", Settings(), SECURITY)
    async with EmbeddedNats(include=include) as server:
        yield server.url
