"""Pulling from a durable consumer in batches, without a wait per message.

nats-py's ``fetch`` waits for each message of a batch separately (a timer and a
task apiece), which costs more than writing the event. Here one pull request
asks for a batch; a subscription callback collects what arrives; a batch is
handed over when the pull has delivered it all, or ended (the server's
404/408/409 status), or the wait is over, whichever comes first. At most one
pull is outstanding, so no more than a batch is ever held unacknowledged.
"""

from __future__ import annotations

import json

import anyio
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

__all__ = ("BatchPuller",)

_STATUS = "Status"


class BatchPuller:
    def __init__(self, nc: NATS, stream: str, durable: str) -> None:
        self._nc = nc
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._inbox = nc.new_inbox()
        self._buffer: list[Msg] = []
        self._arrived = anyio.Event()
        self._owed = 0  # messages the open pull may still deliver
        self._pull_ends = 0.0  # when the open pull expires (after which it is over anyway)
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_msg)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def _on_msg(self, msg: Msg) -> None:
        status = msg.headers.get(_STATUS) if msg.headers else None
        if status is None:
            self._buffer.append(msg)
            self._owed -= 1
        elif status != "100":  # 404 no messages, 408 expired, 409 conflict: this pull is over
            self._owed = 0
        else:
            return  # an idle heartbeat
        self._arrived.set()

    def _pull_open(self) -> bool:
        return self._owed > 0 and anyio.current_time() < self._pull_ends

    async def fetch(self, batch: int, wait_s: float) -> list[Msg]:
        """Up to ``batch`` messages; an empty list if none came within ``wait_s``."""
        if not self._buffer and not self._pull_open():
            self._owed = batch
            self._pull_ends = anyio.current_time() + wait_s + 1.0
            request = {"batch": batch, "expires": int(wait_s * 1e9)}
            await self._nc.publish(self._next_subject, json.dumps(request).encode(),
                                   reply=self._inbox)
        with anyio.move_on_after(wait_s):
            while not self._buffer and self._pull_open():
                self._arrived = anyio.Event()
                await self._arrived.wait()
            # a batch arrives in a burst: let the rest of it land before taking it
            while len(self._buffer) < batch and self._pull_open():
                self._arrived = anyio.Event()
                with anyio.move_on_after(0.002):
                    await self._arrived.wait()
                if not self._arrived.is_set():
                    break
        taken, self._buffer = self._buffer[:batch], self._buffer[batch:]
        return taken
