"""What the router adds to a streamed answer: direct httpx vs through the bus, same run.

The provider is the loopback fake OpenAI server streaming at a fixed pace, in a
process of its own (a provider is another machine). The same chat request is
made two ways, in interleaved rounds so machine noise hits both alike:
``direct`` is stock httpx from this process straight to the provider (time to
the first content delta); ``router`` is a ``Generate`` published on the bus,
answered by a router in its own process (as deployed; ``--in-process`` runs it in
this one) and relayed as ``Token`` events to a reply subject (time to the first
``Token``). The difference is what the router costs: two NATS hops, decode,
prompt, routing, breakers, re-encode. At concurrency 32 both paths run 32
requests at once. The router's httpx requests are carried by aiohttp
(``actors.router._aiohttp``), far cheaper than stock httpx's own stack, so
the headline ``ttft_overhead_ms_p50_c32`` compares against a direct request on
that same stack, sent the way the router sends it: what the router adds, with
none of its transport's saving counted (the fair baseline: the same HTTP stack).
``..._c32_stock_httpx`` is the difference to stock httpx, which flatters the
router: at c=32 the stock httpx path is itself CPU-bound in this process, while
the router's path moves the HTTP work into the router's process on a cheaper
stack.
``..._c32_2routers`` repeats c=32 with a second router process beside the first
(one per core, as ``ragbus actor router --replicas 2`` runs them): one asyncio
process is one core, and at 32 streams the router's is the busy one.

Also: relay throughput of one long, fast stream (provider tokens per second
arriving at the client, counted from the text received; ``tokens_missing``
counts the tokens of the three streams that did not arrive in order), and
cancel-to-close: from publishing a ``Cancel`` to the provider seeing its
connection closed (the fake server stamps the close with CLOCK_MONOTONIC, which
this process reads too). ``ttft_full_query_ms_p50`` is a whole ``Query``
(embedder, retriever, context-trimmer in one process, the router in its own) to
its first token, for reference; null, with the reason on stderr, when that path
cannot run.

    python -m bench.stream [--rounds N] [--pace-ms X]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from multiprocessing.queues import Queue
from typing import Any

import anyio
import httpx
import msgspec
import structlog
from nats.aio.subscription import Subscription

from bench._processes import serve_actors
from bench._stats import dumps, percentile
from ragbus.actors.router import Pool, Prompts, provider_transports
from ragbus.config import (
    IngestorSettings,
    LoggingSettings,
    MetricsSettings,
    NatsSettings,
    ProviderSettings,
    RetrieverSettings,
    RouterSettings,
    RuntimeSettings,
    Settings,
)
from ragbus.runtime import codec, connect, wait_for_instances
from ragbus.runtime.cli import EmbeddedNats
from ragbus.runtime.connection import NATS
from ragbus.subjects import (
    Cancel,
    Cancelled,
    ContextNode,
    Done,
    Failed,
    Generate,
    Query,
    QueryEvent,
    Subjects,
    Token,
    deadline_after,
)
from tests.support.fake_openai import Behaviour, FakeOpenAI

CONTEXT = [ContextNode(chunk_id=f"c{i}", doc_id=f"d{i}", score=1.0 - i / 10,
                       text=f"Passage {i} says that the answer involves fact number {i}. " * 6)
           for i in range(4)]
RELAY_TOKENS = 20_000
QUESTION = "What does passage 2 say?"


def _quiet(level: int = 40) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))


#: the rest of the query path, in one process as ``ragbus up`` would run it
_QUERY_PATH = ("embedder", "ingestor", "retriever", "context-trimmer")


def _serve_fake(behaviour: Behaviour, ports: Queue[int]) -> None:
    """A provider process: the fake server until terminated."""
    async def serve() -> None:
        async with FakeOpenAI(behaviour) as fake:
            ports.put(fake.port)
            await anyio.sleep_forever()

    anyio.run(serve)


async def _first_content(response: httpx.Response, started: float) -> float:
    """ms from ``started`` to the first content delta; reads the whole stream."""
    first: float | None = None
    async for line in response.aiter_lines():
        if first is None and line.startswith("data: {") and '"content":"t' in line:
            first = (time.perf_counter() - started) * 1000
    assert first is not None, "no content from the provider"
    return first


class Bench:
    def __init__(self, nc: NATS, urls: dict[str, str]) -> None:
        self.nc = nc
        self.urls = urls
        self.http = httpx.AsyncClient(timeout=30)  # for the fake's records
        self.subjects = Subjects()
        # stock httpx as a program streaming 32 answers at once would best use it: one
        # client per stream (httpx's pool walks all its connections on every request)
        self.direct_clients: Pool[httpx.AsyncClient] = Pool(
            lambda: httpx.AsyncClient(timeout=30))
        # the router's own HTTP stack, used as the router uses it (a request straight to
        # an aiohttp-carried transport), to tell what the router adds from what its
        # faster transport saves
        self.same_stack = provider_transports("aiohttp", ssl_context=httpx.create_ssl_context())
        # the very messages the router sends, so both paths carry the same request
        self.messages = Prompts(RouterSettings().prompts).render(
            self.generate("x", "paced")).messages
        self.body = {"model": "fake", "stream": True, "max_tokens": 100_000,
                     "temperature": 0.2, "stream_options": {"include_usage": True},
                     "messages": self.messages}

    async def aclose(self) -> None:
        await self.direct_clients.aclose()
        await self.same_stack.aclose()
        await self.http.aclose()

    def generate(self, reply_to: str, provider: str) -> Generate:
        return Generate(question=QUESTION, context=CONTEXT, prompt_tokens=180,
                        reply_to=reply_to, provider=provider, deadline=deadline_after(30))

    async def direct(self) -> float:
        """ms from sending the request to the first content delta, straight to the provider."""
        client = self.direct_clients.acquire()
        try:
            started = time.perf_counter()
            async with client.stream("POST", f"{self.urls['paced']}/chat/completions",
                                     json=self.body) as response:
                return await _first_content(response, started)
        finally:
            self.direct_clients.release(client)

    async def direct_same_stack(self) -> float:
        """:meth:`direct`, over the router's HTTP stack instead of stock httpx."""
        started = time.perf_counter()
        request = httpx.Request("POST", f"{self.urls['paced']}/chat/completions",
                                json=self.body)
        transport = self.same_stack.acquire()
        try:
            response = await transport.handle_async_request(request)
            try:
                return await _first_content(response, started)
            finally:
                await response.aclose()
        finally:
            self.same_stack.release(transport)

    async def _open(self, provider: str) -> tuple[Generate, Subscription]:
        reply_to = self.nc.new_inbox()
        sub = await self.nc.subscribe(reply_to)
        return self.generate(reply_to, provider), sub

    async def _next(self, sub: Subscription, timeout: float = 10.0) -> QueryEvent:
        event: QueryEvent = codec.decode((await sub.next_msg(timeout=timeout)).data, QueryEvent)
        if isinstance(event, (Failed, Cancelled)):
            raise RuntimeError(f"the stream ended with {event}")
        return event

    async def through_router(self) -> float:
        """ms from publishing the Generate to the first Token on the reply subject."""
        request, sub = await self._open("paced")
        try:
            started = time.perf_counter()
            await self.nc.publish(self.subjects.generate, codec.encode(request))
            first: float | None = None
            while not isinstance(event := await self._next(sub), Done):
                if isinstance(event, Token) and first is None:
                    first = (time.perf_counter() - started) * 1000
            assert first is not None
            return first
        finally:
            await sub.unsubscribe()

    async def relay_rate(self) -> tuple[float, int]:
        """Provider tokens per second arriving at the client for one long stream, counted
        from the text received (not from what the router reports), and how many of the
        ``RELAY_TOKENS`` the provider sent never arrived (or arrived out of order)."""
        request, sub = await self._open("fast")
        try:
            await self.nc.publish(self.subjects.generate, codec.encode(request))
            first: float | None = None
            text: list[str] = []
            while not isinstance(event := await self._next(sub, 30), Done):
                if first is None:
                    first = time.perf_counter()
                if isinstance(event, Token):
                    text.append(event.text)
            assert first is not None
            elapsed = time.perf_counter() - first
            received = "".join(text).split()
            in_order = sum(1 for i, t in enumerate(received) if t == f"t{i}")
            return len(received) / elapsed, RELAY_TOKENS - in_order
        finally:
            await sub.unsubscribe()

    async def _disconnects(self, after: int | None = None) -> list[dict[str, Any]]:
        """The provider's recorded disconnects; with ``after``, once there are more."""
        query = "" if after is None else f"?disconnects={after}"
        response = await self.http.get(f"{self.urls['long']}/_fake/records{query}")
        found: list[dict[str, Any]] = response.json()["disconnects"]
        return found

    async def cancel_to_close(self) -> float:
        """ms from publishing a Cancel (after the first token) to the provider seeing the close."""
        seen = len(await self._disconnects())
        request, sub = await self._open("long")
        try:
            await self.nc.publish(self.subjects.generate, codec.encode(request))
            while not isinstance(await self._next(sub), Token):
                pass
            sent = time.perf_counter()
            await self.nc.publish(self.subjects.cancel(request.request_id),
                                  codec.encode(Cancel(request_id=request.request_id)))
            found = await self._disconnects(after=seen)
            if len(found) <= seen:
                raise RuntimeError("the provider never saw the cancelled request's connection "
                                   "close")
            return (float(found[seen]["at"]) - sent) * 1000
        finally:
            await sub.unsubscribe()


    async def full_query(self, n: int) -> float:
        """ms from publishing a ``Query`` to its first Token: embedding, search, fusion,
        trimming and the router. Each question differs, so no cache answers it."""
        reply_to = self.nc.new_inbox()
        sub = await self.nc.subscribe(reply_to)
        question = f"What does passage {n % 4} say about fact number {n % 4}? (query {n})"
        query = Query(question=question, reply_to=reply_to, provider="paced",
                      deadline=deadline_after(30))
        try:
            started = time.perf_counter()
            await self.nc.publish(self.subjects.query, codec.encode(query))
            first: float | None = None
            while not isinstance(event := await self._next(sub, 30), Done):
                if isinstance(event, Token) and first is None:
                    first = (time.perf_counter() - started) * 1000
            if first is None:
                raise RuntimeError("the query finished without a token")
            return first
        finally:
            await sub.unsubscribe()


async def _full_query_ttfts(bench: Bench, settings: Settings, rounds: int) -> list[float]:
    """TTFT of whole queries; empty (with the reason on stderr) when the path cannot run."""
    from ragbus.runtime import Client, UnavailableError
    from ragbus.runtime.cli import follow_job, submit_job
    from ragbus.subjects import Embed, Embedded, IngestRequest, InlineDocument, JobState

    process = multiprocessing.get_context("spawn").Process(
        target=serve_actors, args=(settings, _QUERY_PATH), daemon=True)
    process.start()
    try:
        with anyio.fail_after(120):  # the embedder loads its model first
            while True:
                try:
                    await Client(bench.nc).request(bench.subjects.embed, Embed(texts=["x"]),
                                                   Embedded, timeout=5)
                    break
                except UnavailableError:
                    await anyio.sleep(0.2)
        request = IngestRequest(documents=[
            InlineDocument(id=node.doc_id, text=node.text) for node in CONTEXT])
        await submit_job(bench.nc, request)
        with anyio.fail_after(120):
            final = [p async for p in follow_job(bench.nc, request.job_id, timeout_s=120)][-1]
        if final.state != JobState.SUCCEEDED:
            raise RuntimeError(f"ingesting the bench corpus failed: {final.message}")
        await bench.full_query(0)  # warm: model, caches, connections
        return [await bench.full_query(n) for n in range(1, rounds * 5 + 1)]
    except Exception as exc:
        print(f"bench.stream: the full query path did not run: {exc!r}", file=sys.stderr)
        return []
    finally:
        process.terminate()
        process.join(15)


async def _concurrently(n: int, call: Callable[[], Awaitable[float]]) -> list[float]:
    out: list[float] = []

    async def one() -> None:
        out.append(await call())

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
    return out


async def _wait_for_router(bench: Bench) -> None:
    with anyio.fail_after(60):
        while True:
            try:
                with anyio.fail_after(2):
                    await bench.through_router()
                return
            except Exception:  # not subscribed yet
                await anyio.sleep(0.2)


@contextlib.asynccontextmanager
async def _router(settings: Settings, in_process: bool) -> AsyncIterator[None]:
    """The router under test: its own process (as deployed), or this one (``--in-process``,
    where cross-process scheduling on a busy machine does not count against it)."""
    if in_process:
        from ragbus.actors.router import Router

        async with anyio.create_task_group() as tg:
            router = Router(settings)
            await tg.start(router.serve)
            try:
                yield
            finally:
                router.request_stop()
        return
    async with _router_processes(settings, 1):
        yield


@contextlib.asynccontextmanager
async def _router_processes(settings: Settings, n: int) -> AsyncIterator[None]:
    """``n`` routers in processes of their own, as ``ragbus actor router --replicas n``."""
    spawn = multiprocessing.get_context("spawn")
    processes = [spawn.Process(target=serve_actors, args=(settings, ("router",)), daemon=True)
                 for _ in range(n)]
    for process in processes:
        process.start()
    try:
        yield
    finally:
        for process in processes:
            process.terminate()  # drains while its NATS is still there
        for process in processes:
            process.join(15)


async def _with_second_router(bench: Bench, settings: Settings, rounds: int) -> float:
    """p50 TTFT overhead at concurrency 32 once a second router replica shares the load
    (one process per core, as ``ragbus actor router --replicas 2`` runs them)."""
    async with _router_processes(settings, 1):
        await wait_for_instances(bench.nc, "router", 2)  # until the new replica answers too
        await _warm(bench)
        direct: list[float] = []
        routed: list[float] = []
        for _ in range(rounds):
            await _burst(bench, direct, routed)
    return percentile(routed, 50) - percentile(direct, 50)


async def _warm(bench: Bench) -> None:
    """Connections, pools and caches of both paths, before anything is timed."""
    for _ in range(2):
        await _burst(bench, [], [])


async def _burst(bench: Bench, direct: list[float], routed: list[float],
                 same_stack: list[float] | None = None) -> None:
    """32 concurrent requests down each path, one path at a time."""
    direct += await _concurrently(32, bench.direct)
    routed += await _concurrently(32, bench.through_router)
    if same_stack is not None:
        same_stack += await _concurrently(32, bench.direct_same_stack)


async def _measure(bench: Bench, settings: Settings, rounds: int,
                   in_process: bool) -> dict[str, Any]:
    await _wait_for_router(bench)
    await _warm(bench)
    direct_1: list[float] = []
    router_1: list[float] = []
    direct_32: list[float] = []
    router_32: list[float] = []
    same_stack_32: list[float] = []
    for _ in range(rounds):
        for _ in range(10):
            direct_1.append(await bench.direct())
            router_1.append(await bench.through_router())
        await _burst(bench, direct_32, router_32, same_stack_32)
    two_routers = None if in_process else await _with_second_router(bench, settings, rounds)
    relays = [await bench.relay_rate() for _ in range(3)]
    rates = [rate for rate, _ in relays]
    closes = [await bench.cancel_to_close() for _ in range(rounds * 5)]
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as root:
        full = await _full_query_ttfts(bench, msgspec.structs.replace(
            settings, data_dir=root, retriever=RetrieverSettings(data_dir=f"{root}/qdrant"),
            ingestor=IngestorSettings(progress_interval_ms=0)), rounds)
    d1, r1 = percentile(direct_1, 50), percentile(router_1, 50)
    d32, r32 = percentile(direct_32, 50), percentile(router_32, 50)
    return {
        "ttft_direct_ms_p50": round(d1, 3),
        "ttft_router_ms_p50": round(r1, 3),
        "ttft_overhead_ms_p50_c1": round(r1 - d1, 3),
        # the headline: against a direct request on the router's own HTTP stack (#20)
        "ttft_overhead_ms_p50_c32": round(r32 - percentile(same_stack_32, 50), 3),
        "ttft_overhead_ms_p50_c32_stock_httpx": round(r32 - d32, 3),
        "ttft_overhead_ms_p50_c32_2routers": None if two_routers is None else round(two_routers, 3),
        "ttft_full_query_ms_p50": round(percentile(full, 50), 3) if full else None,
        "tokens_per_s_relay": round(percentile(rates, 50)),
        "tokens_missing": sum(missing for _, missing in relays),
        "cancel_to_close_ms_p50": round(percentile(closes, 50), 3),
        "cancel_to_close_ms_p99": round(percentile(closes, 99), 3),
    }


async def run(rounds: int, pace_ms: float, in_process: bool = False) -> dict[str, Any]:
    _quiet()
    spawn = multiprocessing.get_context("spawn")
    ports: Queue[int] = spawn.Queue()
    behaviours = {
        "paced": Behaviour.counting(8, pace_s=pace_ms / 1000),
        "fast": Behaviour.counting(RELAY_TOKENS, batch=64),
        "long": Behaviour.counting(1_000_000, pace_s=pace_ms / 1000),
    }
    fakes = []
    urls: dict[str, str] = {}
    for name, behaviour in behaviours.items():
        process = spawn.Process(target=_serve_fake, args=(behaviour, ports), daemon=True)
        process.start()
        fakes.append(process)
        urls[name] = f"http://127.0.0.1:{ports.get(timeout=60)}/v1"
    try:
        async with EmbeddedNats() as server:
            settings = Settings(
                nats=NatsSettings(url=server.url), logging=LoggingSettings(level="error"),
                metrics=MetricsSettings(enabled=False),
                runtime=RuntimeSettings(concurrency=128, default_timeout_s=30),
                router=RouterSettings(providers=[
                    *(ProviderSettings(name=name, base_url=url, model="fake",
                                       max_tokens=1_000_000, total_timeout_s=600)
                      for name, url in urls.items()),
                    ProviderSettings(name="extractive", kind="extractive")]))
            async with _router(settings, in_process):
                nc = await connect(settings.nats, name="bench-stream")
                bench = Bench(nc, urls)
                try:
                    return await _measure(bench, settings, rounds, in_process)
                finally:
                    await bench.aclose()
                    await nc.close()
    finally:
        for process in fakes:
            process.terminate()
        for process in fakes:
            process.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20,
                        help="rounds of 10 sequential + 32 concurrent requests per path")
    parser.add_argument("--pace-ms", type=float, default=2.0,
                        help="the fake provider's time between tokens")
    parser.add_argument("--in-process", action="store_true",
                        help="run the router in this process instead of its own")
    args = parser.parse_args()
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    print(dumps(anyio.run(run, args.rounds, args.pace_ms, args.in_process)))


if __name__ == "__main__":
    main()
