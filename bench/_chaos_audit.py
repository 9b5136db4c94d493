"""bench.chaos's audit trail: a third-party reader of the audit stream, and the count.

The reader is what a user would write: plain nats-py, a durable pull consumer on the
audit subjects, every message acknowledged after it is noted. Events published by
ragbus carry their event id as ``Nats-Msg-Id``; messages without one are someone
else's (the fuzzing publishes junk on the audit subjects too) and are counted apart.

At the end the three views are compared: what the publishers counted as published
(their ``ragbus_audit_events_total``, summed over every process), what the stream
holds (read in full by the reader), and what the audit-logger's store holds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from ragbus.actors.audit import read_entries, verify_store
from ragbus.runtime.connection import NATS
from ragbus.subjects import MSG_ID_HEADER, AuditKind, Subjects

__all__ = ("AuditReader", "audit_counts")

REJECTED = AuditKind.AUDIT_REJECTED.value


@dataclass
class AuditReader:
    """Reads the audit stream from its start until stopped and drained."""

    nc: NATS
    subjects: Subjects
    #: stream sequence -> event id (None: a message without one)
    seen: dict[int, str | None] = field(default_factory=dict)
    deliveries: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    async def run(self, stop: anyio.Event) -> None:
        """Fetch and acknowledge until ``stop`` is set and nothing is pending."""
        js = self.nc.jetstream()
        sub = None
        while True:
            try:
                if sub is None:
                    sub = await js.pull_subscribe(
                        self.subjects.audit_all, durable="chaos-third-party",
                        stream=self.subjects.audit_stream,
                        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT,
                                              deliver_policy=DeliverPolicy.ALL,
                                              ack_wait=10))
                msgs = await sub.fetch(256, timeout=0.5)
            except (nats.errors.TimeoutError, TimeoutError):
                if stop.is_set():
                    pending = (await sub.consumer_info()).num_pending if sub else 1
                    if not pending:
                        return
                continue
            except Exception as exc:  # a node down, an election: try again
                self.errors[type(exc).__name__] += 1
                await anyio.sleep(0.5)
                continue
            for msg in msgs:
                self.deliveries += 1
                self.seen[msg.metadata.sequence.stream] = (msg.headers or {}).get(MSG_ID_HEADER)
                try:
                    await msg.ack()
                except Exception as exc:  # delivered again later: noted
                    self.errors[type(exc).__name__] += 1


def audit_counts(reader: AuditReader, store: Path, *, stream_messages: int,
                 published: float, dropped: float, failed: float) -> dict[str, Any]:
    """The issue's ``audit_*`` keys and what they are made of."""
    ids = Counter(i for i in reader.seen.values() if i is not None)
    entries = list(read_entries(store))
    # what the logger could not vouch for (the fuzzer's junk) it stores as a note instead
    notes = sum(e.event.kind == REJECTED for e in entries)
    stored = Counter(e.event.event_id for e in entries if e.event.kind != REJECTED)
    report = verify_store(store)
    in_stream = len(ids)
    missing_in_store = len(set(ids) - set(stored))
    # the publishers' count misses what a process published after its last scrape, so
    # only a count above what the stream holds is a loss
    unaccounted = max(0, round(published) - in_stream)
    return {
        "audit_events": in_stream,
        "audit_lost": missing_in_store + unaccounted + max(0, stream_messages - len(reader.seen)),
        "audit_dup": sum(n - 1 for n in ids.values()) + sum(n - 1 for n in stored.values()),
        "audit": {
            "published_counted": round(published), "dropped": round(dropped),
            "failed": round(failed), "in_stream": in_stream,
            "stream_messages": stream_messages,
            "foreign_in_stream": sum(i is None for i in reader.seen.values()),
            "in_store": len(stored), "store_not_in_stream": len(set(stored) - set(ids)),
            "rejected_notes_in_store": notes,
            "store_chain_ok": report.ok,
            "reader_deliveries": reader.deliveries,
            "reader_errors": dict(reader.errors),
        },
    }
