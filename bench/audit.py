"""The audit trail under load and crashes: nothing lost, nothing twice, the chain intact.

Several publishers (each an ``AuditPublisher`` on its own connection, as actors
have) send ``--events`` audit events as fast as they are let; meanwhile the
audit-logger, a separate process, is restarted twice: once gracefully (SIGTERM,
it drains) and once by SIGKILL (a crash between a write and its acks is fair
game). At the end the store is compared with what was sent.

``events_per_s`` is end to end: from the first event handed over to the last
one on disk, restarts included.

    python -m bench.audit [--events N] [--publishers P]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import structlog
from nats.js.errors import NotFoundError

from ragbus.actors.audit import read_entries, read_head, verify_store
from ragbus.config import AuditSettings, NatsSettings, Settings
from ragbus.runtime import connect
from ragbus.runtime.audit import AuditPublisher, ensure_audit_stream
from ragbus.runtime.cli import EmbeddedNats
from ragbus.runtime.connection import NATS
from ragbus.subjects import Subjects

DURABLE = "audit-logger"


def _logger(url: str, store: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "RAGBUS_NATS__URL": url, "RAGBUS_AUDIT__STORE_DIR": str(store),
           "RAGBUS_AUDIT__ACK_WAIT_S": "2", "RAGBUS_METRICS__ENABLED": "false",
           "RAGBUS_LOGGING__LEVEL": "warning"}
    return subprocess.Popen([sys.executable, "-m", "ragbus.actors.audit"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stored(store: Path) -> int:
    head = read_head(store)
    return head.seq if head is not None else 0


async def _consumer_ready(nc: NATS, s: Subjects) -> None:
    js = nc.jetstream()
    with anyio.fail_after(30):
        while True:
            try:
                await js.consumer_info(s.audit_stream, DURABLE)
                return
            except NotFoundError:
                await anyio.sleep(0.05)


async def run(events: int, publishers: int) -> dict[str, object]:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    with tempfile.TemporaryDirectory(prefix="ragbus-bench-audit-") as tmp:
        store = Path(tmp) / "audit"
        async with EmbeddedNats() as server:
            # producers here are tight loops, far beyond what an actor emits: they wait for
            # room in the queue instead of dropping after the request-path default of 50 ms
            settings = Settings(nats=NatsSettings(url=server.url),
                                audit=AuditSettings(store_dir=str(store),
                                                    enqueue_timeout_ms=30_000))
            s = Subjects(settings.subject_prefix)
            admin = await connect(settings.nats, name="bench-admin")
            await ensure_audit_stream(admin, settings)
            proc = _logger(server.url, store)
            await _consumer_ready(admin, s)
            conns = [await connect(settings.nats, name=f"bench-pub-{i}")
                     for i in range(publishers)]
            pubs = [AuditPublisher(settings, actor=f"publisher{i}") for i in range(publishers)]
            sent: set[str] = set()
            restarts: list[str] = []

            async def produce(pub: AuditPublisher, count: int) -> None:
                for i in range(count):
                    event = pub.event("query.received", request_id=f"{i:032x}",
                                      duration_ms=1.0, sizes={"top_k": 5})
                    sent.add(event.event_id)  # a dropped one counts as lost
                    await pub.put(event)

            async def restart_twice() -> None:
                nonlocal proc
                for fraction, sig in ((1 / 3, signal.SIGTERM), (2 / 3, signal.SIGKILL)):
                    while True:
                        if _stored(store) >= events * fraction:
                            break
                        await anyio.sleep(0.01)
                    proc.send_signal(sig)
                    await anyio.to_thread.run_sync(proc.wait)
                    restarts.append(signal.Signals(sig).name)
                    proc = _logger(server.url, store)

            started = time.perf_counter()
            try:
                async with anyio.create_task_group() as tg:
                    for pub, nc in zip(pubs, conns, strict=True):
                        await tg.start(pub.run, nc)
                    async with anyio.create_task_group() as load:
                        load.start_soon(restart_twice)
                        share = events // publishers
                        for i, pub in enumerate(pubs):
                            extra = events - share * publishers if i == 0 else 0
                            load.start_soon(produce, pub, share + extra)
                    for pub in pubs:
                        await pub.flush(60)
                    tg.cancel_scope.cancel()
                # until everything is on disk, or nothing has moved for a while
                last, moved_at = _stored(store), time.perf_counter()
                while last < len(sent) and time.perf_counter() - moved_at < 10:
                    await anyio.sleep(0.005)
                    now = _stored(store)
                    if now != last:
                        last, moved_at = now, time.perf_counter()
                elapsed = moved_at - started
                await anyio.sleep(2.5)  # past ack_wait: a late redelivery would show now
            finally:
                proc.send_signal(signal.SIGTERM)
                await anyio.to_thread.run_sync(proc.wait)
                for nc in (admin, *conns):
                    await nc.close()
        ids = [e.event.event_id for e in read_entries(store)]
        report = verify_store(store)
    assert restarts == ["SIGTERM", "SIGKILL"], restarts
    return {
        "events": events,
        "events_per_s": round(len(set(ids) & sent) / elapsed),
        "lost": len(sent - set(ids)),
        "duplicates": len(ids) - len(set(ids)),
        "chain_valid": report.ok,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--publishers", type=int, default=4)
    args = parser.parse_args()
    print(json.dumps(anyio.run(run, args.events, args.publishers)))


if __name__ == "__main__":
    main()
