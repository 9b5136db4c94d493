"""Faults under a steady load (issue #19): kill anything, storm the providers, fuzz
every subject; nothing hangs, nothing is lost.

The system runs as it is deployed, in separate processes: a 3-node NATS cluster
(``--nodes``; streams and buckets R3), and each actor under ``ragbus actor NAME``'s
supervising parent: two replicas each of embedder, context-trimmer and router; two
retriever replicas of the one shard, each with its own copy fed by the index stream,
and two bridges, each under a parent of its own (a replica's data dir, id or port
are its own, and a parent gives its children one environment); the ingestor and the
audit-logger. Every child serves its Prometheus metrics on its unit's port + its
index; the bench scrapes them as a scraper would. Two fake OpenAI-compatible
providers run in this process, "local" (first in the chain) and "cloud", each
streaming ``--tokens`` tokens.

After a made-up corpus is ingested, the load runs for the whole bench: queries at
``--rate`` per second (open loop, each with a ``--timeout-s`` deadline), one in four
over WebSocket to the bridges in turn (a socket per ask), the rest on NATS as
``ragbus ask`` sends them; one in ten of each is cancelled once its first token came.
Ingest jobs run one after another (new documents, then changed ones); a third-party
consumer (plain nats-py) reads the audit stream. Faults come one after another,
``--gap-s`` apart:

- ``kill -9`` of one replica (a child process) of each actor kind in turn (a retriever
  replica, a bridge, the ingestor while a job runs, the audit-logger while events
  flow); its parent restarts it. ``restart_to_serving_s``: from the kill until a new
  instance of that actor answers ``$SRV.PING`` with all replicas of it there;
- ``kill -9`` of the NATS node leading JetStream's meta group, brought back a gap later
  (with ``--nodes`` >= 3);
- a WebSocket client that asks and never reads (for one gap), then also a NATS client
  subscribed to ``>`` that never reads its socket (one gap, then on through the
  fuzzing);
- ``--fuzz`` malformed messages (tests/support/fuzz.py) over every subject ragbus
  listens on, at full speed; a child that dies meanwhile is a ``fuzz_crashes``;
- the local provider answers 429 with Retry-After, then 5xx, then stalls before the
  first token, then drops its streams mid-way; cloud stays healthy; then local heals.

Then the load stops, the ingest jobs finish, both retriever replicas catch up, the
processes drain, and the checks run on what is left: each retriever replica's copy
against the documents submitted, the audit store and the stream against the
publishers' counts.

Prints one JSON object with issue #19's keys, and beside them what they are made of
(``phases``: each phase's queries and p99 of answered ones, against ``quiet``).
``breaker_open_all_routers_s`` is from the first 429 the local provider sent until
both router processes' own ``ragbus_breaker_state`` gauges said open (polled on their
metrics ports: an upper bound, ``..._at_least`` the lower one); ``breaker_open_bus_s``
until the ``open`` transition was on the bus.

    python -m bench.chaos [--rate 4] [--gap-s 8] [--nodes 3] [--tokens 20] [--fuzz 10000]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import structlog

from bench._chaos_audit import AuditReader, audit_counts
from bench._chaos_fuzz import FuzzRun
from bench._chaos_ingest import IngestLoad, check_copy
from bench._chaos_load import Load, Outcome, never_reading_ws, slow_nats_consumer
from bench._chaos_procs import CounterTotals, Unit, children, free_ports, rss_mb, scrape
from bench._jobs import ingested
from bench._stats import dumps, percentile
from bench.bridge import corpus
from ragbus.config import NatsSettings
from ragbus.runtime import codec, connect, discover, wait_for_instances
from ragbus.runtime.cli import EmbeddedCluster, EmbeddedNats, index_replicas
from ragbus.runtime.connection import NATS
from ragbus.subjects import BreakerState, BreakerTransition, IngestRequest, Subjects
from tests.support.fake_openai import Behaviour, FakeOpenAI

S = Subjects()
#: actor kinds, in the order one of each is killed
KILLED = ("embedder", "retriever", "context-trimmer", "router", "bridge", "ingestor",
          "audit-logger")
#: what the run cannot do, and why (empty: everything the issue lists is done)
NOT_MEASURED: list[str] = []
FAULTS_NOT_RUN: list[str] = []
#: runtime.max_message_bytes of every actor here: what the fuzzer's huge strings pass
MAX_MESSAGE_BYTES = 256 * 1024


def units(root: Path) -> list[Unit]:
    def retriever(name: str) -> Unit:
        return Unit(f"retriever-{name}", "retriever", 1, free_ports(1), {
            "RAGBUS_RETRIEVER__DATA_DIR": str(root / f"retriever-{name}"),
            "RAGBUS_RETRIEVER__REPLICA_ID": name})

    def bridge(name: str) -> Unit:
        port = free_ports(2)
        return Unit(f"bridge-{name}", "bridge", 1, free_ports(1), {
            "RAGBUS_BRIDGE__PORT": str(port), "RAGBUS_BRIDGE__UPLOAD_PORT": str(port + 1)})

    return [Unit("embedder", "embedder", 2, free_ports(2)), retriever("a"), retriever("b"),
            Unit("context-trimmer", "context-trimmer", 2, free_ports(2)),
            Unit("router", "router", 2, free_ports(2)), bridge("a"), bridge("b"),
            Unit("ingestor", "ingestor", 1, free_ports(1)),
            Unit("audit-logger", "audit-logger", 1, free_ports(1))]


def replicas_of(all_units: list[Unit], actor: str) -> int:
    return sum(u.replicas for u in all_units if u.actor == actor)


def _config(root: Path, local: str, cloud: str, cooldown_s: float) -> Path:
    """Router settings: the two providers and the extractive last resort. The breaker's
    failure cooldown is short, so that within each provider fault the breaker probes
    local again (and each fault reaches it) instead of staying open for the whole run."""
    def provider(name: str, url: str, locality: str) -> str:
        return (f'[[router.providers]]\nname = "{name}"\nbase_url = "{url}"\n'
                f'model = "{name}-model"\nlocality = "{locality}"\n'
                "first_token_timeout_s = 3.0\nidle_timeout_s = 3.0\n")
    path = root / "ragbus.toml"
    path.write_text('[router]\nmode = "local-first"\nanswer_cache = false\n'
                    f"breaker_failure_cooldown_s = {cooldown_s}\n\n"
                    + provider("local", local, "local") + "\n" + provider("cloud", cloud, "cloud")
                    + '\n[[router.providers]]\nname = "extractive"\nkind = "extractive"\n')
    return path


def _meta_leader(cluster: EmbeddedCluster) -> EmbeddedNats:
    """The node leading JetStream's meta group, as any node's monitoring port names it."""
    def monitor(node: EmbeddedNats, path: str) -> Any:
        with urllib.request.urlopen(f"{node.monitor_url}/{path}", timeout=5) as r:
            return json.load(r)

    leader = monitor(cluster.nodes[0], "jsz")["meta_cluster"]["leader"]
    return next(n for n in cluster.nodes if monitor(n, "varz")["server_name"] == leader)


def _summary(outcomes: list[Outcome]) -> dict[str, Any]:
    done = sorted(o.ms for o in outcomes if o.kind == "done")
    return {"queries": len(outcomes), "answered": len(done),
            "failed": sum(o.kind == "failed" for o in outcomes),
            "hung": sum(o.kind == "hung" for o in outcomes),
            "answered_ms_p99": round(percentile(done, 99)) if done else None}


def _codes(outcomes: list[Outcome]) -> dict[str, int]:
    codes: dict[str, int] = {}
    for o in outcomes:
        if o.code is not None:
            codes[o.code] = codes.get(o.code, 0) + 1
    return codes


class Chaos:
    """One run: the processes, the load, the faults, and what was seen of them."""

    def __init__(self, root: Path, nc: NATS, all_units: list[Unit],
                 parents: dict[str, subprocess.Popen[bytes]], local: FakeOpenAI, *,
                 cluster: EmbeddedCluster | EmbeddedNats, questions: list[str], rate: float,
                 gap_s: float, timeout_s: float, fuzz: int) -> None:
        self.root, self.nc, self.units, self.parents = root, nc, all_units, parents
        self.local, self.cluster, self.questions = local, cluster, questions
        self.rate, self.gap_s, self.fuzz_n = rate, gap_s, fuzz
        bridges = [f"ws://127.0.0.1:{u.env['RAGBUS_BRIDGE__PORT']}/ws"
                   for u in all_units if u.actor == "bridge"]
        self.load = Load(nc, timeout_s, bridges)
        self.ingest = IngestLoad(nc)
        self.audit = AuditReader(nc, S)
        self.counters = CounterTotals()
        self.restarts: dict[str, float] = {}
        self.rss_max = 0.0
        self.breaker_opened_at: list[float] = []  # open on <prefix>.breaker.local
        self.all_routers_open_at: float | None = None
        self.all_routers_open_after: float | None = None
        self.queued_at_kills = 0.0
        self.ingest_killed_job: str | None = None
        self.fuzz: FuzzRun | None = None
        self.fuzz_deaths: list[dict[str, object]] = []
        self.slow: dict[str, Any] = {}

    # -- sampling -----------------------------------------------------------------------
    def _pids(self) -> list[int]:
        return [pid for p in self.parents.values()
                for pid in (p.pid, *children(p.pid, spares=True))]

    async def sample(self, stop: anyio.Event) -> None:
        """RSS of every process and the audit counters of every child, each second."""
        while not stop.is_set():
            self.rss_max = max([self.rss_max, *(rss_mb(pid) for pid in self._pids())])
            await self.scrape_all()
            await anyio.sleep(1)

    async def scrape_all(self) -> None:
        for unit in self.units:
            for port in unit.ports:
                samples = await anyio.to_thread.run_sync(scrape, port)
                if samples is None:
                    continue
                for result in ("published", "dropped", "failed"):
                    self.counters.see(port, samples, "ragbus_audit_events_total",
                                      result=result)

    async def watch_routers(self) -> None:
        """Poll each router's ``ragbus_breaker_state{provider="local"}`` until it says
        open (2): each router process keeps its own breaker. The gauge was set after the
        last scrape that showed it closed had started and before the first that showed
        it open came back: ``all_routers_open_at`` is the later router's upper bound,
        ``all_routers_open_after`` its lower one (the gap between them is the scrape's
        own latency on a busy router)."""
        ports = [p for u in self.units if u.actor == "router" for p in u.ports]
        key = ("ragbus_breaker_state", (("actor", "router"), ("provider", "local")))
        opened: dict[int, tuple[float, float]] = {}

        async def watch(port: int) -> None:
            began = time.perf_counter()
            while True:
                samples = await anyio.to_thread.run_sync(scrape, port, 5.0)
                if samples is not None and samples.get(key) == 2:
                    opened[port] = (began, time.perf_counter())
                    return
                began = time.perf_counter()
                await anyio.sleep(0.01)

        async with anyio.create_task_group() as tg:
            for port in ports:
                tg.start_soon(watch, port)
        self.all_routers_open_after = max(low for low, _ in opened.values())
        self.all_routers_open_at = max(high for _, high in opened.values())

    async def hear_breaker(self) -> None:
        breaker = await self.nc.subscribe(S.breaker("local"))
        try:
            async for msg in breaker.messages:
                t = codec.decode(msg.data, BreakerTransition)
                if t.state == BreakerState.OPEN:
                    self.breaker_opened_at.append(time.perf_counter())
        finally:
            with anyio.CancelScope(shield=True):
                await breaker.unsubscribe()

    # -- faults -------------------------------------------------------------------------
    async def kill(self, actor: str) -> None:
        """kill -9 one child of the first unit of ``actor``; seconds until all its
        replicas answer a ping again, one of them new."""
        unit = next(u for u in self.units if u.actor == actor)
        want = replicas_of(self.units, actor)
        before = {str(s["id"]) for s in await discover(self.nc, "PING", wait_s=0.2)
                  if s.get("name") == actor}
        victim = children(self.parents[unit.label].pid)[0]
        last = await anyio.to_thread.run_sync(scrape, unit.metrics_port)
        if last is not None:  # events the victim holds unacknowledged die with it
            self.queued_at_kills += sum(v for (n, _), v in last.items()
                                        if n == "ragbus_audit_queued")
        os.kill(victim, signal.SIGKILL)
        killed = time.perf_counter()
        with anyio.fail_after(120):
            while True:
                now = await discover(self.nc, "PING", wait_s=0.05, until=lambda a: len(
                    [s for s in a if s.get("name") == actor]) >= want)
                ids = {str(s["id"]) for s in now if s.get("name") == actor}
                if len(ids) == want and ids - before:
                    self.restarts[actor] = round(time.perf_counter() - killed, 3)
                    return

    async def kill_ingestor_mid_job(self) -> None:
        with anyio.move_on_after(self.gap_s * 4):
            self.ingest_killed_job = await self.ingest.running_job()
        await self.kill("ingestor")

    def deaths(self) -> list[dict[str, object]]:
        return [d for u in self.units for d in u.deaths(self.root)]

    async def fuzz_phase(self) -> None:
        before = len(self.deaths())
        self.fuzz = FuzzRun(self.nc, S, self.fuzz_n, MAX_MESSAGE_BYTES)
        await self.fuzz.fire()
        await anyio.sleep(self.gap_s)
        await self.fuzz.settle(30)
        self.fuzz_deaths = self.deaths()[before:]

    async def slow_clients(self, fuzz: Callable[[], Any]) -> None:
        """A WebSocket client that asks and never reads, alone for one gap; then also a
        NATS client subscribed to everything (``>``) that never reads its socket, for
        one gap, then on through the fuzzing (which sends the most bytes of the run).
        What the server holds for the latter, whether it counted it a slow consumer,
        and whether the bridge closed the former (its close code) are in
        ``slow_clients``."""
        self.load.phase = "ws client never reads"
        ws = await never_reading_ws(self.load.bridges[0], 20, self.questions[0])
        await anyio.sleep(self.gap_s)
        host, port = self.cluster.url.split(",")[0].removeprefix("nats://").split(":")
        before = await anyio.to_thread.run_sync(self._slow_consumers)
        sock = slow_nats_consumer(host, int(port), ">")
        try:
            self.load.phase = "+ slow NATS consumer"
            await anyio.sleep(self.gap_s)
            self.slow["pending_bytes_after_gap"] = await anyio.to_thread.run_sync(
                self._slow_consumer_pending)
            self.load.phase = "fuzz + slow clients"
            await fuzz()
            self.slow["pending_bytes_after_fuzz"] = await anyio.to_thread.run_sync(
                self._slow_consumer_pending)
            self.slow["never_reading_ws_close_code"] = ws.close_code
        finally:
            sock.close()
            with anyio.move_on_after(5):
                await ws.close()
        self.slow["slow_consumers_seen_by_server"] = await anyio.to_thread.run_sync(
            self._slow_consumers) - before

    def _monitor(self, path: str) -> list[Any]:
        nodes = self.cluster.nodes if isinstance(self.cluster, EmbeddedCluster) \
            else [self.cluster]
        found = []
        for node in nodes:
            try:
                with urllib.request.urlopen(f"{node.monitor_url}/{path}", timeout=5) as r:
                    found.append(json.load(r))
            except OSError:
                pass
        return found

    def _slow_consumer_pending(self) -> int | None:
        """Bytes the server holds for the client that never reads (None: it is gone: the
        server closes a slow consumer's connection)."""
        for connz in self._monitor("connz?limit=1024"):
            for c in connz.get("connections") or []:
                if c.get("name") == "chaos-slow-consumer":
                    return int(c.get("pending_bytes", 0))
        return None

    def _slow_consumers(self) -> int:
        return sum(int(v.get("slow_consumers", 0)) for v in self._monitor("varz"))

    # -- the run ------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        stop, audit_stop = anyio.Event(), anyio.Event()
        load = self.load

        async def send(tg: Any) -> None:
            i = 0
            start = time.perf_counter()
            while not stop.is_set():
                question, cancel = self.questions[i % len(self.questions)], i % 10 == 9
                ask = load.ask_ws if i % 4 == 3 and load.bridges else load.ask
                tg.start_soon(functools.partial(ask, question, cancel=cancel))
                i += 1
                await anyio.sleep(max(0.0, start + i / self.rate - time.perf_counter()))

        async def phase(name: str, action: Callable[[], Any] | None = None,
                        wait: bool = True) -> None:
            load.phase = name
            if action is not None:
                await action()
            if wait:
                await anyio.sleep(self.gap_s)

        async with anyio.create_task_group() as background:
            audit_done = anyio.Event()
            background.start_soon(self.read_audit, audit_stop, audit_done)
            background.start_soon(self.ingest.run)
            async with anyio.create_task_group() as queries, \
                    anyio.create_task_group() as tg:
                tg.start_soon(send, queries)
                tg.start_soon(self.sample, stop)
                tg.start_soon(self.hear_breaker)
                await phase("quiet")
                for actor in KILLED:
                    await phase(f"kill {actor}", self.kill_ingestor_mid_job
                                if actor == "ingestor" else functools.partial(self.kill, actor))
                if isinstance(self.cluster, EmbeddedCluster):
                    cluster = self.cluster
                    victim: list[EmbeddedNats] = []

                    async def kill_meta_leader() -> None:
                        victim.append(await anyio.to_thread.run_sync(_meta_leader, cluster))
                        await victim[0].kill()

                    async def bring_back() -> None:
                        await victim[0].restart()

                    await phase("kill NATS meta leader", kill_meta_leader)
                    await phase("NATS node back", bring_back)
                await phase("slow clients", functools.partial(self.slow_clients,
                                                              self.fuzz_phase), wait=False)
                await self.provider_faults(phase)
                stop.set()
                tg.cancel_scope.cancel()
            # the load is over: the jobs finish, the replicas catch up, the counts settle
            self.ingest.stopping = True
            with anyio.move_on_after(300):
                while any(p is None for p in self.ingest.jobs.values()):  # noqa: ASYNC110
                    await anyio.sleep(0.5)
            caught_up = await self.replicas_caught_up()
            await self.scrape_all()
            await self.stop_all()
            audit_stop.set()
            with anyio.move_on_after(120):
                await audit_done.wait()
            background.cancel_scope.cancel()
        return await self.result(caught_up)

    async def read_audit(self, stop: anyio.Event, done: anyio.Event) -> None:
        try:
            await self.audit.run(stop)
        finally:
            done.set()

    async def provider_faults(self, phase: Callable[..., Any]) -> None:
        local = self.local
        before = len(local.requests)
        healthy = local.behaviour

        async def rate_limited() -> None:
            local.behaviour = Behaviour.rate_limited(
                retry_after=str(max(1, int(self.gap_s / 4))))

        async with anyio.create_task_group() as tg:
            tg.start_soon(self.watch_routers)
            await phase("local 429", rate_limited)
            tg.cancel_scope.cancel()
        self.first_429 = [r.at for r in local.requests[before:]][:1]
        faults = {"local 5xx": Behaviour.server_error(503),
                  "local stalls": Behaviour.stall_before_first_token(),
                  "local drops mid-stream": Behaviour.disconnect_mid_stream(after=2)}
        for name, behaviour in faults.items():
            async def set_fault(b: Behaviour = behaviour) -> None:
                local.behaviour = b
            await phase(name, set_fault)

        async def heal() -> None:
            local.behaviour = healthy
        await phase("local healed", heal)

    async def replicas_caught_up(self) -> bool:
        """Both retriever replicas have applied the whole index stream (60 s at most)."""
        js = self.nc.jetstream()
        names = {u.env["RAGBUS_RETRIEVER__REPLICA_ID"] for u in self.units
                 if u.actor == "retriever"}
        with anyio.move_on_after(60):
            while True:
                try:
                    last = int((await js.stream_info(S.index_stream)).state.last_seq)
                    lags = await index_replicas(self.nc, S)
                except Exception:  # an election: ask again
                    lags, last = [], -1
                done = {r.replica for r in lags if r.delivered >= last and not r.behind}
                if names <= done:
                    return True
                await anyio.sleep(0.5)
        return False

    async def stop_all(self) -> None:
        for proc in self.parents.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.parents.values():
            await anyio.to_thread.run_sync(proc.wait)

    async def result(self, caught_up: bool) -> dict[str, Any]:
        out = self.load.outcomes
        first = self.first_429[0] if self.first_429 else None
        open_bus = [t - first for t in self.breaker_opened_at if first and t >= first]
        all_open = (self.all_routers_open_at - first
                    if first is not None and self.all_routers_open_at is not None else None)
        copies = {u.env["RAGBUS_RETRIEVER__REPLICA_ID"]: await anyio.to_thread.run_sync(
            check_copy, Path(u.env["RAGBUS_RETRIEVER__DATA_DIR"]), dict(self.ingest.last))
            for u in self.units if u.actor == "retriever"}
        try:
            info = await self.nc.jetstream().stream_info(S.audit_stream)
            stream_messages = int(info.state.messages)
        except Exception:  # reported as lost below, not hidden
            stream_messages = -1
        audit = audit_counts(
            self.audit, self.root / "data" / "audit", stream_messages=stream_messages,
            published=self.counters.total("ragbus_audit_events_total", result="published"),
            dropped=self.counters.total("ragbus_audit_events_total", result="dropped"),
            failed=self.counters.total("ragbus_audit_events_total", result="failed"))
        audit["audit"]["queued_in_killed_processes"] = round(self.queued_at_kills)
        killed_job = self.ingest.jobs.get(self.ingest_killed_job or "")
        fuzz = self.fuzz.counts() if self.fuzz else {}
        phases = dict.fromkeys(o.phase for o in out)  # in the order they ran
        return {
            "queries": len(out),
            "answered": sum(o.kind == "done" for o in out),
            "failed_with_code": sum(o.kind == "failed" and o.code is not None for o in out),
            "cancelled": sum(o.kind == "cancelled" for o in out),
            "hung": sum(o.kind == "hung" for o in out),
            "apologies": sum(o.apology for o in out),
            "answered_after_fallback": sum(o.kind == "done" and o.provider != "local"
                                           for o in out),
            "breaker_open_all_routers_s": round(all_open, 3) if all_open is not None else None,
            "restart_to_serving_s_max": max(self.restarts.values()) if self.restarts else None,
            "ingest_jobs": len(self.ingest.jobs),
            "ingest_lost": sum(lost for _, lost, _ in copies.values()),
            "ingest_dup": sum(dup for _, _, dup in copies.values()),
            "audit_events": audit["audit_events"], "audit_lost": audit["audit_lost"],
            "audit_dup": audit["audit_dup"],
            "fuzz_messages": fuzz.get("messages"),
            "fuzz_crashes": len(self.fuzz_deaths),
            "fuzz_error_replies": fuzz.get("error_replies"),
            "rss_mb_max": round(self.rss_max),
            "not_measured": NOT_MEASURED,
            "faults_not_run": FAULTS_NOT_RUN,
            "lost_sockets": sum(o.kind == "lost" for o in out),
            "via_ws": sum(o.via == "ws" for o in out),
            "breaker_open_bus_s": round(open_bus[0], 3) if open_bus else None,
            "breaker_open_all_routers_s_at_least": round(
                max(0.0, self.all_routers_open_after - first), 3)
            if first is not None and self.all_routers_open_after is not None else None,
            "restart_to_serving_s": self.restarts,
            "failed_codes": _codes(out),
            "ingest": {"jobs_ended": dict(self.ingest.ended()),
                       "docs": len(self.ingest.last),
                       "replicas_caught_up": caught_up,
                       "per_replica_expected_lost_dup": copies,
                       "killed_mid_job": None if killed_job is None else {
                           "state": killed_job.state.value, "attempt": killed_job.attempt}},
            "audit": audit["audit"],
            "fuzz": {**fuzz, "deaths": self.fuzz_deaths},
            "slow_clients": self.slow,
            "phases": {name: _summary([o for o in out if o.phase == name]) for name in phases},
        }


async def run(rate: float, gap_s: float, nodes: int, tokens: int, timeout_s: float,
              fuzz: int) -> dict[str, Any]:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    with tempfile.TemporaryDirectory(prefix="ragbus-chaos-") as tmp:
        root = Path(tmp)
        cluster: EmbeddedCluster | EmbeddedNats = (
            EmbeddedCluster(nodes, root / "nats") if nodes > 1 else EmbeddedNats(root / "nats"))
        async with cluster, FakeOpenAI(Behaviour.counting(tokens, pace_s=0.01)) as local, \
                FakeOpenAI(Behaviour.counting(tokens, pace_s=0.01)) as cloud:
            url = cluster.url
            env = {**os.environ, "RAGBUS_NATS__URL": url,
                   "RAGBUS_NATS__REPLICAS": str(min(nodes, 3)),
                   "RAGBUS_CONFIG": str(_config(root, local.base_url, cloud.base_url,
                                                 cooldown_s=max(1.0, gap_s / 4))),
                   "RAGBUS_DATA_DIR": str(root / "data"),
                   "RAGBUS_RUNTIME__MAX_MESSAGE_BYTES": str(MAX_MESSAGE_BYTES),
                   # a job whose ingestor died is handed out again after this
                   "RAGBUS_INGESTOR__ACK_WAIT_S": "20",
                   # every WebSocket ask comes from one loopback address: one identity
                   "RAGBUS_BRIDGE__ASKS_PER_MINUTE": "1000000",
                   "RAGBUS_BRIDGE__CONCURRENT_ASKS": "10000",
                   "RAGBUS_BRIDGE__ASK_TIMEOUT_S": str(timeout_s),
                   "RAGBUS_LOGGING__LEVEL": "warning", "RAGBUS_LOGGING__FORMAT": "json"}
            (root / "logs").mkdir()
            all_units = units(root)
            parents = {u.label: u.start(root, env) for u in all_units}
            nc = await connect(NatsSettings(url=url), name="bench-chaos")
            try:
                for actor in dict.fromkeys(u.actor for u in all_units):
                    await wait_for_instances(nc, actor, replicas_of(all_units, actor),
                                             timeout_s=300)
                docs, questions = corpus(40)
                await ingested(nc, IngestRequest(documents=docs))
                chaos = Chaos(root, nc, all_units, parents, local, cluster=cluster,
                              questions=questions, rate=rate, gap_s=gap_s,
                              timeout_s=timeout_s, fuzz=fuzz)
                result = await chaos.run()
            finally:
                for proc in parents.values():
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGTERM)
                for proc in parents.values():
                    await anyio.to_thread.run_sync(proc.wait)
                await nc.close()
        result["restart_delays_s"] = {
            u.label: [d["restart_in_s"] for d in u.deaths(root)] for u in all_units}
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=4.0, help="queries per second")
    parser.add_argument("--gap-s", type=float, default=8.0, help="seconds between faults")
    parser.add_argument("--nodes", type=int, default=3, help="NATS nodes (1: one server)")
    parser.add_argument("--tokens", type=int, default=20, help="tokens per provider answer")
    parser.add_argument("--timeout-s", type=float, default=10.0, help="each query's deadline")
    parser.add_argument("--fuzz", type=int, default=10_000, help="fuzzed messages")
    args = parser.parse_args()
    print(dumps(anyio.run(run, args.rate, args.gap_s, args.nodes, args.tokens,
                          args.timeout_s, args.fuzz)))


if __name__ == "__main__":
    main()
