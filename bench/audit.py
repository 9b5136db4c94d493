"""The audit trail under load and crashes: nothing lost, nothing twice, the chain intact.

Several publishers (each an ``AuditPublisher`` on its own connection, as actors
have) send ``--events`` audit events as fast as they are let; meanwhile the
audit-logger, a separate process, is restarted twice: once gracefully (SIGTERM,
it drains) and once by SIGKILL (a crash between a write and its acks is fair
game). At the end the store is compared with what was sent.

``events_per_s`` is end to end: from the first event handed over to the last
one on disk, restarts included. The producers are tight loops, far beyond what
an actor emits, so by default they wait up to 30 s for room in a publisher's
queue; ``--defaults`` runs the shipped settings (50 ms, then the event is
dropped and counted, so a request is never held up by its audit trail) and
reports ``dropped`` apart from ``lost`` (accepted but not on disk).

    python -m bench.audit [--events N] [--publishers P] [--defaults]
"""

from __future__ import annotations

import argparse
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

from bench._stats import dumps
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
    # --no-supervise: this bench restarts the logger itself, after each kill
    return subprocess.Popen([sys.executable, "-m", "ragbus.runtime.cli", "actor", "audit-logger",
                             "--no-supervise"], env=env,
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


async def run(events: int, publishers: int, defaults: bool = False) -> dict[str, object]:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    with tempfile.TemporaryDirectory(prefix="ragbus-bench-audit-") as tmp:
        store = Path(tmp) / "audit"
        async with EmbeddedNats() as server:
            # producers here are tight loops, far beyond what an actor emits: they wait for
            # room in the queue instead of dropping after the request-path default of 50 ms
            # (--defaults: the request-path default, and what it drops is counted)
            audit = AuditSettings(store_dir=str(store)) if defaults else AuditSettings(
                store_dir=str(store), enqueue_timeout_ms=30_000)
            settings = Settings(nats=NatsSettings(url=server.url), audit=audit)
            s = Subjects(settings.subject_prefix)
            admin = await connect(settings.nats, name="bench-admin")
            await ensure_audit_stream(admin, settings)
            proc = _logger(server.url, store)
            await _consumer_ready(admin, s)
            conns = [await connect(settings.nats, name=f"bench-pub-{i}")
                     for i in range(publishers)]
            pubs = [AuditPublisher(settings, actor=f"publisher{i}") for i in range(publishers)]
            sent: set[str] = set()
            dropped: set[str] = set()
            restarts: list[str] = []

            async def produce(pub: AuditPublisher, count: int) -> None:
                for i in range(count):
                    event = pub.event("query.received", request_id=f"{i:032x}",
                                      duration_ms=1.0, sizes={"top_k": 5})
                    sent.add(event.event_id)
                    if not await pub.put(event):  # the queue stayed full: dropped, counted
                        dropped.add(event.event_id)

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
        # lost: handed over and accepted, yet not on disk; dropped: refused at once by a
        # full queue (by design, counted by the publisher's metric and logged)
        "lost": len(sent - dropped - set(ids)),
        "dropped": len(dropped),
        "duplicates": len(ids) - len(set(ids)),
        "chain_valid": report.ok,
        "settings": "defaults" if defaults else "enqueue_timeout_ms=30000 (raised)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--defaults", action="store_true",
                        help="the audit settings as shipped (enqueue_timeout_ms 50): tight "
                             "producers then see events dropped, which are counted")
    args = parser.parse_args()
    print(dumps(anyio.run(run, args.events, args.publishers, args.defaults)))


if __name__ == "__main__":
    main()
