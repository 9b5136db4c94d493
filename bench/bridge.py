"""The bridge's cost: time to first token over WebSocket vs the same query on NATS, same run.

The real query path runs in this process on an embedded nats-server: embedder,
retriever, ingestor, context-trimmer and the router with its extractive
provider (no LLM), plus the bridge. ``clients`` WebSocket clients stay connected
and each asks ``asks`` questions. Every ask has a twin: the same question
published straight on NATS by a client that, like the bridge, routes events
through one wildcard subscription. A warm-up round of each path first makes the
caches (embeddings, retrieval) equally warm for both.

Load: ``paced`` (default) sends ask k at k/rate and its twin half a gap later,
like users with think time; ``burst`` has every client ask at the same instant,
round after round (ws and direct rounds alternating which goes first), which
measures a saturated process rather than the bridge's latency.

``--cold`` measures the other end: every cache on the query path off and a
distinct question per ask (the twin on the other path asks the same text), so
each ask embeds, searches, trims and answers; the JSON's ``variant`` says which
run it is.

``ttft`` is from sending the question to receiving the first token;
``bridge_overhead_ms_p50`` is the WebSocket p50 minus the direct p50; ``errors``
counts asks on either path that did not end with ``done`` and a token.

    python -m bench.bridge [--clients 100] [--asks 5] [--mode paced|burst] [--rate 50] [--cold]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import structlog
from nats.aio.msg import Msg
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from bench._jobs import ingested
from bench._stats import dumps, percentile
from ragbus.config import (
    BridgeSettings,
    EmbedderSettings,
    IngestorSettings,
    NatsSettings,
    ProviderSettings,
    RetrieverSettings,
    RouterSettings,
    RuntimeSettings,
    Settings,
)
from ragbus.runtime import Actor, codec, connect
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

TIMEOUT_S = 60.0
_PLACES = ["Arden", "Brisk Hollow", "Calder Bay", "Dunmore", "Eskvale", "Fenwick", "Glenroe",
           "Harrowgate", "Ivel", "Jarrow"]
_TRAITS = ["singing at dawn", "building stone towers", "glowing in the dark",
           "migrating across deserts", "storing seeds in ice", "weaving silk nets",
           "changing colour in rain", "sleeping upside down"]


def corpus(n: int, seed: int = 7) -> tuple[list[InlineDocument], list[str]]:
    """``n`` made-up creatures, one document each, and one question about each."""
    rng = random.Random(seed)
    docs: list[InlineDocument] = []
    questions: list[str] = []
    for i in range(n):
        name = "".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou")
                       for _ in range(3)).capitalize()
        place, trait = rng.choice(_PLACES), rng.choice(_TRAITS)
        text = (f"The {name} is a small creature found only around {place}. It is best known "
                f"for {trait}. Field surveys in {1950 + i} counted {rng.randint(40, 900)} "
                f"{name}s, most of them near old orchards. The {name} lives for about "
                f"{rng.randint(3, 30)} years and feeds mostly on beetles and wild berries.")
        docs.append(InlineDocument(id=f"creature-{i}", title=f"The {name}", text=text))
        questions.append(f"What is the {name} best known for?")
    return docs, questions


@asynccontextmanager
async def running(*actors: Actor) -> AsyncIterator[None]:
    async with anyio.create_task_group() as tg:
        for actor in actors:
            await tg.start(actor.serve)
        try:
            yield
        finally:
            for actor in actors:
                actor.request_stop()


def settings_for(url: str, root: Path, *, caches: bool = True) -> Settings:
    """The bench's settings; ``caches=False`` turns off every cache on the query path
    (embeddings, retrievals, answers), so each ask does all of its work."""
    return Settings(
        data_dir=str(root),
        nats=NatsSettings(url=url),
        runtime=RuntimeSettings(concurrency=256, default_timeout_s=TIMEOUT_S),
        embedder=EmbedderSettings(cache=caches),
        retriever=RetrieverSettings(data_dir=str(root / "qdrant"), cache=caches),
        ingestor=IngestorSettings(progress_interval_ms=0),
        router=RouterSettings(providers=[ProviderSettings(name="extractive",
                                                          kind="extractive")],
                              answer_cache=caches),
        bridge=BridgeSettings(port=0, asks_per_minute=1_000_000, concurrent_asks=10_000,
                              ask_timeout_s=TIMEOUT_S),
    )


class DirectAsker:
    """Queries on NATS with one wildcard subscription, events routed by request id."""

    def __init__(self, nc: NATS, subjects: Subjects) -> None:
        self.nc = nc
        self.subjects = subjects
        self.inbox = nc.new_inbox()
        self._waiting: dict[str, tuple[float, anyio.Event, list[Any]]] = {}

    async def start(self) -> None:
        await self.nc.subscribe(f"{self.inbox}.*", cb=self._on_event)

    async def _on_event(self, msg: Msg) -> None:
        entry = self._waiting.get(msg.subject.rpartition(".")[2])
        if entry is None:
            return
        started, finished, result = entry
        event: QueryEvent = codec.decode(msg.data, QueryEvent)
        if isinstance(event, Token) and result[0] is None:
            result[0] = (time.perf_counter() - started) * 1000
        elif isinstance(event, Done | Failed | Cancelled):
            result[1] = isinstance(event, Done)
            finished.set()

    async def ask(self, question: str) -> tuple[float | None, bool]:
        request_id = new_id()
        finished = anyio.Event()
        result: list[Any] = [None, False]
        query = Query(request_id=request_id, question=question, top_k=3,
                      reply_to=f"{self.inbox}.{request_id}",
                      deadline=now_ms() + int(TIMEOUT_S * 1000))
        self._waiting[request_id] = (time.perf_counter(), finished, result)
        try:
            await self.nc.publish(self.subjects.query, codec.encode(query))
            with anyio.move_on_after(TIMEOUT_S + 1):
                await finished.wait()
        finally:
            del self._waiting[request_id]
        return result[0], bool(result[1])


async def ws_ask(ws: ClientConnection, ask_id: str, question: str) -> tuple[float | None, bool]:
    started = time.perf_counter()
    await ws.send(json.dumps({"type": "ask", "id": ask_id, "question": question, "top_k": 3}))
    ttft = None
    with anyio.move_on_after(TIMEOUT_S + 1):
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] == "token" and ttft is None:
                ttft = (time.perf_counter() - started) * 1000
            elif frame["type"] in ("done", "failed", "cancelled", "error"):
                return ttft, frame["type"] == "done"
    return ttft, False


async def run(clients: int, asks: int, docs: int, mode: str = "paced",
              rate: float = 50.0, cold: bool = False) -> dict[str, object]:
    from ragbus.actors.bridge import Bridge
    from ragbus.actors.embedder import Embedder
    from ragbus.actors.ingestor import Ingestor
    from ragbus.actors.retriever import Retriever
    from ragbus.actors.router import Router
    from ragbus.actors.trimmer import ContextTrimmer

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    documents, questions = corpus(docs)
    with tempfile.TemporaryDirectory() as tmp:
        async with EmbeddedNats() as server:
            settings = settings_for(server.url, Path(tmp), caches=not cold)
            bridge = Bridge(settings)
            actors = (Embedder(settings), Retriever(settings), Ingestor(settings),
                      ContextTrimmer(settings), Router(settings), bridge)
            async with running(*actors):
                nc = await connect(settings.nats, name="bench-direct")
                await ingested(nc, IngestRequest(documents=documents))
                direct = DirectAsker(nc, Subjects(settings.subject_prefix))
                await direct.start()
                sockets = [await ws_connect(bridge.ws_url, max_size=None, compression=None)
                           for _ in range(clients)]
                for ws in sockets:
                    await ws.recv()  # ready
                # a client asks one question at a time on its socket: when an ask outlasts
                # the gap to that client's next one (cold asks on a busy machine), the next
                # waits for it, and its time counts from when it is sent
                turns = [anyio.Lock() for _ in sockets]

                ws_ttft: list[float] = []
                direct_ttft: list[float] = []
                errors = 0

                def question(client: int, round_: int) -> str:
                    k = client * asks + round_
                    if cold:  # every ask its own text (its twin on the other path the same)
                        return f"{questions[k % len(questions)]} (ask {k})"
                    return questions[k % len(questions)]

                async def ask_ws(c: int, round_: int, record: bool) -> None:
                    nonlocal errors
                    async with turns[c]:
                        ttft, ok = await ws_ask(sockets[c], f"r{round_}c{c}",
                                                question(c, round_))
                    if record:
                        errors += 0 if ok and ttft is not None else 1
                        if ttft is not None:
                            ws_ttft.append(ttft)

                async def ask_direct(c: int, round_: int, record: bool) -> None:
                    nonlocal errors
                    ttft, ok = await direct.ask(question(c, round_))
                    if record:
                        errors += 0 if ok and ttft is not None else 1
                        if ttft is not None:
                            direct_ttft.append(ttft)

                async def burst(path: Any, round_: int, record: bool) -> None:
                    async with anyio.create_task_group() as tg:
                        for c in range(clients):
                            tg.start_soon(path, c, round_, record)

                # warm-up: every question once on each path (cold: one round, which warms
                # connections and code paths; with caches off it leaves nothing to reuse)
                for round_ in range(1 if cold else asks):
                    await burst(ask_direct, round_, False)
                    await burst(ask_ws, round_, False)
                if mode == "burst":
                    for round_ in range(asks):
                        pair = (ask_ws, ask_direct) if round_ % 2 == 0 else (ask_direct, ask_ws)
                        for path in pair:
                            await burst(path, round_, True)
                else:
                    # ask k goes out at k / rate; its twin on the other path half a gap later
                    began = anyio.current_time() + 0.1
                    gap = 1 / rate

                    async def at(when: float, path: Any, c: int, round_: int) -> None:
                        await anyio.sleep(max(0.0, began + when - anyio.current_time()))
                        await path(c, round_, True)

                    async with anyio.create_task_group() as tg:
                        for k in range(clients * asks):
                            c, round_ = k % clients, k // clients
                            first, second = (ask_ws, ask_direct) if k % 2 == 0 else (
                                ask_direct, ask_ws)
                            tg.start_soon(at, k * gap, first, c, round_)
                            tg.start_soon(at, (k + 0.5) * gap, second, c, round_)
                for ws in sockets:
                    await ws.close()
                await nc.close()
    ws50, direct50 = percentile(ws_ttft, 50), percentile(direct_ttft, 50)
    return {
        "clients": clients,
        "asks": clients * asks,
        "ttft_ms_p50": round(ws50, 2),
        "ttft_ms_p99": round(percentile(ws_ttft, 99), 2),
        "errors": errors,
        "bridge_overhead_ms_p50": round(ws50 - direct50, 2),
        "direct_ttft_ms_p50": round(direct50, 2),
        "load": (f"paced: {rate:g} asks/s per path" if mode == "paced"
                 else f"burst: {clients} asks at once per round"),
        "variant": "cold" if cold else "warm",
        "query_path": "embedder+retriever+context-trimmer+router(extractive), " + (
            "caches off, a distinct question per ask" if cold else "warm caches"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--asks", type=int, default=5, help="questions per client")
    parser.add_argument("--docs", type=int, default=200, help="documents in the corpus")
    parser.add_argument("--mode", choices=("paced", "burst"), default="paced",
                        help="paced: asks spread at --rate (users with think time); burst: "
                             "every client asks at the same instant, round after round")
    parser.add_argument("--rate", type=float, default=50.0,
                        help="paced mode: asks per second on each path")
    parser.add_argument("--cold", action="store_true",
                        help="caches off and a distinct question per ask: every ask embeds, "
                             "searches and answers (the default measures warm cache hits)")
    args = parser.parse_args()
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    print(dumps(anyio.run(run, args.clients, args.asks, args.docs, args.mode,
                               args.rate, args.cold)))


if __name__ == "__main__":
    main()
