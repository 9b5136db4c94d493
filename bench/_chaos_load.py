"""bench.chaos's query load: asks over NATS (as ``ragbus ask``) and over WebSocket (as a
browser), some cancelled once their first token came, and the two clients that should
harm no one: a WebSocket client that never reads, a NATS subscriber that never drains."""

from __future__ import annotations

import json
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import anyio
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from ragbus.runtime import ACCEPT_WAIT_S, Client
from ragbus.runtime.connection import NATS
from ragbus.subjects import Cancelled, Done, Failed, Query, Subjects, Token

__all__ = ("Load", "Outcome", "never_reading_ws", "slow_nats_consumer")

S = Subjects()


@dataclass(slots=True)
class Outcome:
    phase: str
    via: str = "nats"  # or "ws"
    kind: str = "hung"  # done, failed, cancelled, lost (the socket closed), hung
    code: str | None = None
    provider: str | None = None
    apology: bool = False
    ms: float = 0.0


@dataclass(slots=True)
class Load:
    nc: NATS
    timeout_s: float
    bridges: list[str] = field(default_factory=list)  # ws:// URLs
    phase: str = "quiet"
    outcomes: list[Outcome] = field(default_factory=list)
    _next_bridge: int = 0

    async def ask(self, question: str, *, cancel: bool = False) -> None:
        out = Outcome(self.phase)
        self.outcomes.append(out)
        began = time.perf_counter()
        query = Query(question=question, reply_to=self.nc.new_inbox())
        # the stream gives up by itself at deadline + 0.5 s: a query still open 1 s after
        # its deadline is hung
        with anyio.move_on_after(self.timeout_s + 1):
            async with Client(self.nc).open_stream(S.query, query, timeout=self.timeout_s,
                                                   accept_within=ACCEPT_WAIT_S) as events:
                async for event in events:
                    if isinstance(event, Token) and cancel:
                        cancel = False
                        await events.cancel("bench.chaos cancels mid-stream")
                    elif isinstance(event, Done):
                        out.kind, out.provider = "done", event.provider
                    elif isinstance(event, Failed):
                        out.kind, out.code = "failed", event.code.value
                        out.apology = event.message.startswith("Sorry")
                    elif isinstance(event, Cancelled):
                        out.kind = "cancelled"
        out.ms = (time.perf_counter() - began) * 1000

    async def ask_ws(self, question: str, *, cancel: bool = False) -> None:
        """One ask on a socket of its own, to the bridges in turn; a bridge that refuses
        the connection (killed, restarting) sends the client to the next one, as a load
        balancer would. A socket closed under an open ask is ``lost``."""
        out = Outcome(self.phase, via="ws")
        self.outcomes.append(out)
        began = time.perf_counter()
        ask_id = uuid.uuid4().hex[:16]
        self._next_bridge += 1
        order = [self.bridges[(self._next_bridge + i) % len(self.bridges)]
                 for i in range(len(self.bridges))]
        with anyio.move_on_after(self.timeout_s + 1):
            for url in order:
                try:
                    ws = await ws_connect(url, max_size=None, compression=None,
                                          open_timeout=2)
                except Exception:  # refused, reset, 503: the next bridge
                    continue
                try:
                    await ws.send(json.dumps({"type": "ask", "id": ask_id,
                                              "question": question, "top_k": 3}))
                    async for raw in ws:
                        frame: dict[str, Any] = json.loads(raw)
                        kind = frame.get("type")
                        if kind == "token" and cancel:
                            cancel = False
                            await ws.send(json.dumps({"type": "cancel", "id": ask_id}))
                        elif kind == "done":
                            out.kind, out.provider = "done", frame.get("provider")
                        elif kind in ("failed", "error"):
                            out.kind, out.code = "failed", frame.get("code")
                            out.apology = str(frame.get("message", "")).startswith("Sorry")
                        elif kind == "cancelled":
                            out.kind = "cancelled"
                        if out.kind != "hung":
                            break
                except ConnectionClosed:
                    out.kind = "lost"
                finally:
                    with anyio.move_on_after(2, shield=True):
                        await ws.close()
                break
        out.ms = (time.perf_counter() - began) * 1000


async def never_reading_ws(url: str, asks: int, question: str) -> Any:
    """A socket that asks ``asks`` questions and never reads a frame (the client's own
    queue holds one message, so its TCP window fills at once). Returns the socket."""
    ws = await ws_connect(url, max_size=None, compression=None, max_queue=1, open_timeout=5)
    for i in range(asks):
        await ws.send(json.dumps({"type": "ask", "id": f"never-reads-{i}",
                                  "question": question, "top_k": 3}))
    return ws


def slow_nats_consumer(host: str, port: int, subject: str) -> socket.socket:
    """A NATS client that subscribes to ``subject`` and never reads its socket: the
    server's own slow-consumer case (plain protocol, as any client library would send
    it). The receive buffer is made small so the server sees it stall soon."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, port))
    sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"name":"chaos-slow-consumer",'
                 b'"protocol":1}\r\nSUB ' + subject.encode() + b" 1\r\nPING\r\n")
    return sock
