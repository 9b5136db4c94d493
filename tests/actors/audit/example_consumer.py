"""A third party's own durable consumer on the audit stream: the README example, verbatim.

Plain nats-py, nothing from ragbus: any NATS client can do the same.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy


async def export_audit(url: str, handle: Callable[[dict[str, Any]], None], *,
                       user: str | None = None, password: str | None = None,
                       durable: str = "siem-export", stop_after: int | None = None) -> int:
    # on a secured bus log in as the `auditor` role, which reads only its own inbox
    nc = await nats.connect(url, user=user, password=password,
                            inbox_prefix="_INBOX.auditor" if user else "_INBOX")
    js = nc.jetstream()
    # a durable consumer of your own: it remembers where you stopped, and it does not
    # take events away from the audit-logger (the stream keeps them for every consumer)
    sub = await js.pull_subscribe(
        "rag.audit.>", durable=durable, stream="RAG_AUDIT",
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
                              ack_wait=30, max_deliver=-1))
    seen = 0
    try:
        while stop_after is None or seen < stop_after:
            want = 100 if stop_after is None else min(100, stop_after - seen)
            try:
                msgs = await sub.fetch(want, timeout=1)
            except TimeoutError:
                continue
            for msg in msgs:
                handle(json.loads(msg.data))  # e.g. forward to your SIEM
                await msg.ack()  # only once it is safely handled: otherwise it comes again
                seen += 1
    finally:
        await nc.close()
    return seen
