"""A real WebSocket client for the bridge tests, and the settings they share."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import anyio
import jwt
from nats.aio.subscription import Subscription
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from ragbus.actors.bridge import Bridge
from ragbus.config import BridgeSettings, NatsSettings, RuntimeSettings, Secret, Settings
from ragbus.runtime import codec
from ragbus.runtime.connection import NATS
from ragbus.subjects import AuditEvent, Subjects

__all__ = (
    "API_KEY",
    "AUDIENCE",
    "JWT_SECRET",
    "ORIGIN",
    "TERMINAL",
    "ask",
    "closed_with",
    "frames_until_end",
    "make_jwt",
    "make_settings",
    "next_audit",
    "open_ws",
    "recv",
    "watch_audit",
)

ORIGIN = "http://app.test"
API_KEY = "rk-test-0123456789abcdef"
JWT_SECRET = "jwt-secret-for-tests-" + "0123456789abcdef" * 3  # HS512 wants 64 bytes
AUDIENCE = "ragbus-tests"
TERMINAL = ("done", "failed", "cancelled", "error")
S = Subjects()


def make_settings(nats_url: str, *, environment: str = "development", **bridge: Any) -> Settings:
    bridge.setdefault("allowed_origins", [ORIGIN])
    bridge.setdefault("ready_actors", ["query-standin"])
    return Settings(
        environment=environment,  # type: ignore[arg-type]
        nats=NatsSettings(url=nats_url, max_reconnect_attempts=2, reconnect_time_wait_s=0.1),
        runtime=RuntimeSettings(concurrency=64, default_timeout_s=10.0, drain_grace_s=1.0),
        bridge=BridgeSettings(port=0, api_keys=[Secret(API_KEY)], jwt_secret=Secret(JWT_SECRET),
                              jwt_audience=AUDIENCE, **bridge),
    )


def make_jwt(*, sub: str | None = "alice", exp_in: float | None = 300.0,
             aud: str | None = AUDIENCE, secret: str = JWT_SECRET) -> str:
    claims: dict[str, Any] = {}
    if sub is not None:
        claims["sub"] = sub
    if exp_in is not None:
        claims["exp"] = int(time.time() + exp_in)
    if aud is not None:
        claims["aud"] = aud
    return jwt.encode(claims, secret, algorithm="HS256")


def open_ws(bridge: Bridge, *, origin: str | None = ORIGIN, query: str = "",
            headers: dict[str, str] | None = None, rcvbuf: int | None = None,
            **kwargs: Any) -> connect:
    """A client connection; ``rcvbuf`` shrinks the client's TCP receive buffer, so a
    client that stops reading makes the bridge's writes back up quickly."""
    if rcvbuf is not None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        assert bridge.port is not None
        sock.connect(("127.0.0.1", bridge.port))
        sock.setblocking(False)
        kwargs["sock"] = sock
    return connect(bridge.ws_url + query, origin=origin,  # type: ignore[arg-type]
                   additional_headers=headers, open_timeout=5, close_timeout=2, **kwargs)


async def recv(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    with anyio.fail_after(timeout):
        frame: dict[str, Any] = json.loads(await ws.recv())
    return frame


async def ask(ws: ClientConnection, ask_id: str, question: str, **fields: Any) -> None:
    await ws.send(json.dumps({"type": "ask", "id": ask_id, "question": question, **fields}))


async def frames_until_end(ws: ClientConnection, ask_id: str,
                           timeout: float = 10.0) -> list[dict[str, Any]]:
    """Frames of ``ask_id`` up to and including its terminal (or error) frame."""
    frames: list[dict[str, Any]] = []
    with anyio.fail_after(timeout):
        while True:
            frame = await recv(ws, timeout)
            if frame.get("id") != ask_id:
                continue
            frames.append(frame)
            if frame["type"] in TERMINAL:
                return frames


async def closed_with(ws: ClientConnection, timeout: float = 10.0) -> tuple[int, str]:
    """Read until the bridge closes the socket; its close code and reason
    (1006 when the connection was dropped without a close frame)."""
    with anyio.fail_after(timeout):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed as exc:
            if exc.rcvd is None:
                return 1006, ""
            return exc.rcvd.code, exc.rcvd.reason


async def watch_audit(nc: NATS, kind: str) -> Subscription:
    """Subscribe before the action: audit events also reach core subscribers."""
    sub = await nc.subscribe(S.audit("bridge", kind))
    await nc.flush()
    return sub


async def next_audit(sub: Subscription, timeout: float = 5.0) -> AuditEvent:
    msg = await sub.next_msg(timeout=timeout)
    event: AuditEvent = codec.decode(msg.data, AuditEvent)
    return event


async def wait_released(bridge: Bridge, identity: str) -> None:
    """Until the identity has no ask in flight in the shared limits (places go back from
    the bridge's release task, a moment after an ask's last frame)."""
    with anyio.fail_after(5):
        while (await bridge.limits.state(identity)).in_flight:  # noqa: ASYNC110 - a KV
            await anyio.sleep(0.02)
