"""Find running actors through the micro-service discovery protocol."""

from __future__ import annotations

import json
from typing import Any

import anyio
from nats.aio.client import Client as NATS

__all__ = ("discover",)


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
