"""The seeds' load targets: whole queries at open-loop rates, phase by phase.

The whole query path runs as ``ragbus up`` runs it (every actor in one process,
on an embedded nats-server, defaults except where said): embedder, retriever,
ingestor, context-trimmer, router and the bridge, in a child process, so the
clients (this process) never share the actors' event loop; ``--layout
per-actor`` runs each actor in a process of its own instead, as ``ragbus actor
NAME`` and the compose file deploy them. The router's provider is the
loopback fake OpenAI server in a process of its own (a provider is another
machine), streaming ``--tokens`` tokens (100) ``--pace-ms`` (5) apart: a
realistic LLM, not the extractive shortcut. The corpus is bench.bridge's
made-up creatures, one question each, asked round-robin (so the caches warm up
as a popular question set would warm them; ``--cold`` turns every cache off).

Queries arrive open loop (each sent at its scheduled time, whatever the ones
before it are doing, and timed from that time), ``--bridge-share`` (0.2) of them
through WebSocket clients of the bridge and the rest as ``Query`` messages on
NATS. Phases (the seeds' 000/002): ``sustained`` 1,000 req/min for 60 s,
``stress`` 5,000 req/min for 30 s, ``spike`` 10,000 req/min for 10 s
(``--scale`` shortens every phase). Per phase:

- ``sent``, ``done`` (a ``done`` event), ``shed`` (refused with ``OVERLOADED`` or
  ``RATE_LIMIT``), ``shed_reply_ms_p99`` (how fast a refusal came), ``failed``
  (any other code; ``failed_codes`` counts them), ``hung`` (no final event by the
  query's deadline + 1 s);
- ``ttft_ms_p50|p95|p99`` (first token) and ``total_ms_p50|p95|p99`` (``done``),
  over the queries that were answered.

Targets: at 1,000 req/min 0 failed, 0 shed, TTFT p95 <= 100 ms and total p95 <=
2,000 ms; above capacity, what is not served is shed fast (reply <= 50 ms) and
never hung, and admitted queries keep TTFT p95 <= 500 ms.

    python -m bench.load [--scale 1.0] [--tokens 100] [--pace-ms 5] [--bridge-share 0.2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from queue import Queue
from typing import Any

import anyio
import structlog
from msgspec.structs import replace
from nats.aio.msg import Msg
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from bench._jobs import ingested
from bench._processes import serve_actors
from bench._stats import dumps, percentile
from bench.bridge import corpus, settings_for
from bench.stream import _serve_fake
from ragbus.actors.bridge import page_url, ws_url
from ragbus.config import ProviderSettings, RouterSettings, Settings
from ragbus.runtime import codec, connect, wait_for_instances
from ragbus.runtime.cli import EmbeddedNats
from ragbus.runtime.connection import NATS
from ragbus.subjects import (
    Cancelled,
    Done,
    Failed,
    IngestRequest,
    InlineDocument,
    Query,
    QueryEvent,
    Subjects,
    Token,
    new_id,
    now_ms,
)
from tests.support import free_port
from tests.support.fake_openai import Behaviour

#: (name, requests per minute, seconds) as the seeds set them
PHASES = (("sustained", 1_000, 60.0), ("stress", 5_000, 30.0), ("spike", 10_000, 10.0))
#: each query's deadline: a slow answer is a slow answer, not a hang
DEADLINE_S = 30.0
SHED_CODES = frozenset({"OVERLOADED", "RATE_LIMIT"})
SOCKETS = 16


@dataclass(slots=True)
class Outcome:
    """How one query ended, timed from its scheduled send (ms)."""

    ttft_ms: float | None = None
    end_ms: float | None = None
    code: str | None = None  # None: done; "hung": nothing by the deadline
    finished: anyio.Event = field(default_factory=anyio.Event)


class NatsAsker:
    """Queries on NATS, events routed by request id through one wildcard subscription
    (as the bridge does), so a thousand queries do not cost a thousand subscriptions."""

    def __init__(self, nc: NATS, subjects: Subjects) -> None:
        self.nc = nc
        self.subjects = subjects
        self.inbox = nc.new_inbox()
        self._waiting: dict[str, tuple[float, Outcome]] = {}

    async def start(self) -> None:
        await self.nc.subscribe(f"{self.inbox}.*", cb=self._on_event)

    async def _on_event(self, msg: Msg) -> None:
        entry = self._waiting.get(msg.subject.rpartition(".")[2])
        if entry is None:
            return
        due, outcome = entry
        event: QueryEvent = codec.decode(msg.data, QueryEvent)
        now = (time.perf_counter() - due) * 1000
        if isinstance(event, Token) and outcome.ttft_ms is None:
            outcome.ttft_ms = now
        elif isinstance(event, Done | Failed | Cancelled):
            outcome.end_ms = now
            outcome.code = None if isinstance(event, Done) else (
                event.code.value if isinstance(event, Failed) else "CANCELLED")
            outcome.finished.set()

    async def ask(self, question: str, due: float) -> Outcome:
        request_id = new_id()
        outcome = Outcome()
        self._waiting[request_id] = (due, outcome)
        query = Query(request_id=request_id, question=question, top_k=5,
                      reply_to=f"{self.inbox}.{request_id}",
                      deadline=now_ms() + int(DEADLINE_S * 1000))
        try:
            await self.nc.publish(self.subjects.query, codec.encode(query))
            with anyio.move_on_after(DEADLINE_S + 1 - (time.perf_counter() - due)):
                await outcome.finished.wait()
        finally:
            del self._waiting[request_id]
        if not outcome.finished.is_set():
            outcome.code = "hung"
        return outcome


class BridgeAsker:
    """Asks over a few WebSocket connections to the bridge, frames routed by ask id."""

    def __init__(self, sockets: list[ClientConnection]) -> None:
        self._sockets = sockets
        self._waiting: dict[str, tuple[float, Outcome]] = {}
        self._next = 0

    async def read(self, ws: ClientConnection) -> None:
        async for raw in ws:
            frame = json.loads(raw)
            entry = self._waiting.get(str(frame.get("id")))
            if entry is None:
                continue
            due, outcome = entry
            now = (time.perf_counter() - due) * 1000
            kind = frame["type"]
            if kind == "token" and outcome.ttft_ms is None:
                outcome.ttft_ms = now
            elif kind in ("done", "failed", "cancelled", "error"):
                outcome.end_ms = now
                outcome.code = None if kind == "done" else str(frame.get("code", kind.upper()))
                outcome.finished.set()

    async def ask(self, question: str, due: float) -> Outcome:
        ask_id = new_id()
        outcome = Outcome()
        self._waiting[ask_id] = (due, outcome)
        ws = self._sockets[self._next % len(self._sockets)]
        self._next += 1
        try:
            await ws.send(json.dumps({"type": "ask", "id": ask_id, "question": question,
                                      "top_k": 5}))
            with anyio.move_on_after(DEADLINE_S + 1 - (time.perf_counter() - due)):
                await outcome.finished.wait()
        finally:
            del self._waiting[ask_id]
        if not outcome.finished.is_set():
            outcome.code = "hung"
        return outcome


def _summary(rate: int, outcomes: list[Outcome]) -> dict[str, Any]:
    done = [o for o in outcomes if o.code is None]
    shed = [o for o in outcomes if o.code in SHED_CODES]
    failed: dict[str, int] = {}
    for o in outcomes:
        if o.code is not None and o.code not in SHED_CODES and o.code != "hung":
            failed[o.code] = failed.get(o.code, 0) + 1
    ttft = [o.ttft_ms for o in done if o.ttft_ms is not None]
    total = [o.end_ms for o in done if o.end_ms is not None]

    def p(values: list[float], q: float) -> float | None:
        return round(percentile(values, q), 1) if values else None

    return {
        "rate_per_min": rate, "sent": len(outcomes), "done": len(done), "shed": len(shed),
        "shed_reply_ms_p99": p([o.end_ms for o in shed if o.end_ms is not None], 99),
        "failed": sum(failed.values()), "failed_codes": failed,
        "hung": sum(1 for o in outcomes if o.code == "hung"),
        "ttft_ms_p50": p(ttft, 50), "ttft_ms_p95": p(ttft, 95), "ttft_ms_p99": p(ttft, 99),
        "total_ms_p50": p(total, 50), "total_ms_p95": p(total, 95),
        "total_ms_p99": p(total, 99),
    }


async def _phase(rate: int, seconds: float, questions: list[str], nats: NatsAsker,
                 bridge: BridgeAsker, bridge_share: float) -> list[Outcome]:
    """Send ``rate`` queries a minute for ``seconds``, open loop; every ``1/share``-th
    (spread evenly) through the bridge."""
    n = int(rate / 60 * seconds)
    gap = 60 / rate
    start = time.perf_counter() + 0.05
    outcomes: list[Outcome] = []
    every = round(1 / bridge_share) if bridge_share > 0 else 0

    async def one(i: int) -> None:
        due = start + i * gap
        await anyio.sleep(max(0.0, due - time.perf_counter()))
        question = questions[i % len(questions)]
        asker = bridge if every and i % every == 0 else nats
        outcomes.append(await asker.ask(question, due))

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
    return outcomes


#: the actors, as ``ragbus up`` starts them (the audit-logger aside: no phase reads it)
ACTORS = ("embedder", "retriever", "ingestor", "context-trimmer", "router", "bridge")
LAYOUTS = ("one-process", "per-actor")


async def run(scale: float, tokens: int, pace_ms: float, bridge_share: float,
              cold: bool, layout: str) -> dict[str, Any]:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    spawn = multiprocessing.get_context("spawn")
    ports: Queue[int] = spawn.Queue()  # type: ignore[assignment]
    fake = spawn.Process(target=_serve_fake, daemon=True, args=(
        Behaviour(tokens=tuple(f"w{i} " for i in range(tokens)), pace_s=pace_ms / 1000),
        ports))
    fake.start()
    port = ports.get(timeout=60)
    documents, questions = corpus(200)
    results: dict[str, Any] = {}
    hosts: list[BaseProcess] = []
    try:
        with tempfile.TemporaryDirectory(prefix="ragbus-load-") as tmp:
            async with EmbeddedNats() as server:
                base = settings_for(server.url, Path(tmp), caches=not cold)
                settings = replace(
                    base,
                    router=RouterSettings(
                        providers=[ProviderSettings(name="llm",
                                                    base_url=f"http://127.0.0.1:{port}",
                                                    model="fake", max_tokens=tokens * 2)],
                        answer_cache=not cold),
                    bridge=replace(base.bridge, port=free_port(), uploads=False))
                # the actors never share this process's loop with the clients: a client
                # is another machine, and 10,000 req/min of 100-token answers is ~17k
                # events/s arriving at the clients alone
                groups = [ACTORS] if layout == "one-process" else [(a,) for a in ACTORS]
                hosts = [spawn.Process(target=serve_actors, args=(settings, names),
                                       daemon=True) for names in groups]
                for host in hosts:
                    host.start()
                try:
                    results = await _measure(settings, documents, questions, scale,
                                             bridge_share)
                finally:  # before the server goes, or the actors log its loss
                    _stop(hosts)
    finally:
        _stop(hosts)
        fake.terminate()
        fake.join(10)
    return {**results, "tokens": tokens, "pace_ms": pace_ms, "bridge_share": bridge_share,
            "scale": scale, "caches": "off" if cold else "on (as shipped)",
            "layout": layout, "actor_processes": len(hosts), "cores": os.cpu_count()}


def _stop(hosts: list[BaseProcess]) -> None:
    for host in hosts:
        if host.is_alive():
            host.terminate()
    for host in hosts:
        host.join(15)


async def _measure(settings: Settings, documents: list[InlineDocument], questions: list[str],
                   scale: float, bridge_share: float) -> dict[str, Any]:
    results: dict[str, Any] = {}
    nc = await connect(settings.nats, name="bench-load")
    for name in ACTORS:  # models loaded, stores open: no phase measures a start
        await wait_for_instances(nc, name, 1, timeout_s=180)
    await ingested(nc, IngestRequest(documents=documents))
    nats = NatsAsker(nc, Subjects(settings.subject_prefix))
    await nats.start()
    page = page_url(settings.bridge)
    sockets = [await ws_connect(ws_url(page), max_size=None, compression=None)
               for _ in range(SOCKETS)]
    for ws in sockets:
        await ws.recv()  # ready
    asker = BridgeAsker(sockets)
    async with anyio.create_task_group() as readers:
        for ws in sockets:
            readers.start_soon(asker.read, ws)
        for i, q in enumerate(questions[:20]):  # warm both paths
            await (asker if i % 2 else nats).ask(q, time.perf_counter())
        for name, rate, seconds in PHASES:
            outcomes = await _phase(rate, seconds * scale, questions, nats,
                                    asker, bridge_share)
            results[name] = _summary(rate, outcomes)
            await anyio.sleep(2)  # the next phase starts from quiet
        for ws in sockets:
            await ws.close()
        readers.cancel_scope.cancel()
    await nc.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every phase's length (0.25: a quick look)")
    parser.add_argument("--tokens", type=int, default=100, help="tokens per answer")
    parser.add_argument("--pace-ms", type=float, default=5.0, help="ms between tokens")
    parser.add_argument("--bridge-share", type=float, default=0.2,
                        help="share of queries sent through the bridge's WebSocket")
    parser.add_argument("--cold", action="store_true", help="every cache off")
    parser.add_argument("--layout", choices=LAYOUTS, default="one-process",
                        help="the actors in one process, as `ragbus up` runs them, or one "
                             "process each, as `ragbus actor NAME` and compose run them")
    args = parser.parse_args()
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    print(dumps(anyio.run(run, args.scale, args.tokens, args.pace_ms, args.bridge_share,
                               args.cold, args.layout)))


if __name__ == "__main__":
    main()
