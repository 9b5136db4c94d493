"""Connections as a role, and checks that the server refused an operation."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import anyio
import nats
from nats.aio.client import Client as NATS

from ragbus.config import ROLES, Secret, SecuritySettings
from ragbus.runtime.security import credentials

#: known, random role passwords for this test run (tests look for them in outputs)
SECURITY = SecuritySettings(
    enabled=True,
    **{f"{role}_password": Secret(f"{role}-{secrets.token_hex(12)}") for role in ROLES},
)


@dataclass
class As:
    """A connection logged in as one role, keeping the server's complaints."""

    role: str
    nc: NATS
    errors: list[str] = field(default_factory=list)

    async def refused(self, action: str, subject: str, timeout: float = 2.0) -> bool:
        """True once the server reports a permissions violation for this action and subject."""
        needle = f'permissions violation for {action} to "{subject.lower()}"'
        with anyio.move_on_after(timeout):
            while True:
                if any(needle in e for e in self.errors):
                    return True
                await anyio.sleep(0.01)
        return False


async def login(url: str, role: str) -> As:
    conn: As | None = None
    early: list[str] = []

    async def on_error(exc: Exception) -> None:
        (conn.errors if conn is not None else early).append(str(exc).lower())

    nc = await nats.connect(url, name=f"test-{role}", error_cb=on_error,
                            max_reconnect_attempts=0, connect_timeout=2,
                            **credentials(SECURITY, role).options())
    conn = As(role, nc, early)
    return conn
