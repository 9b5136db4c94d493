"""Find running actors through the micro-service discovery protocol."""

from __future__ import annotations

import json
from typing import Any

import anyio
from nats.aio.client import Client as NATS

__all__ = ("discover", "wait_for_instances")


async def discover(nc: NATS, verb: str = "STATS", *, wait_s: float = 0.5) -> list[dict[str, Any]]:
    """Every answer to ``$SRV.<verb>`` within ``wait_s`` (replies arrive from each instance)."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    answers: list[dict[str, Any]] = []
    try:
        await nc.publish(f"$SRV.{verb}", b"", reply=inbox)
        await nc.flush()
        with anyio.move_on_after(wait_s):
            async for msg in sub.messages:
                try:
                    answers.append(json.loads(msg.data))
                except ValueError:
                    continue
    finally:
        await sub.unsubscribe()
    return sorted(answers, key=lambda a: (a.get("name", ""), a.get("id", "")))


async def wait_for_instances(nc: NATS, name: str, count: int, *,
                             timeout_s: float = 60.0) -> set[str]:
    """The ids of actor ``name``'s instances, once exactly ``count`` answer a ping.

    For whoever starts processes and must know they serve before sending work
    (a replica that has not subscribed yet would leave the others all the load).
    """
    with anyio.fail_after(timeout_s):
        while True:
            found = {str(s["id"]) for s in await discover(nc, "PING", wait_s=0.3)
                     if s.get("name") == name}
            if len(found) == count:
                return found
            await anyio.sleep(0.2)
