"""Faults under a steady load (issue #19), first part: process kills and provider faults.

The system runs as it is deployed, in separate processes: a 3-node NATS cluster
(``--nodes``; streams and buckets R3), and each actor under ``ragbus actor NAME``'s
supervising parent: two replicas each of embedder, context-trimmer and router, one
retriever (replicas of one shard that each hold the index are not built yet), the
ingestor and the audit-logger. Two fake OpenAI-compatible providers run in this
process, "local" (first in the chain) and "cloud", each streaming ``--tokens`` tokens.
After a made-up corpus is ingested, queries go out on NATS at ``--rate`` per second
(open loop, each with a ``--timeout-s`` deadline, sent as ``ragbus ask`` sends them)
for the whole run, while faults come one after another, ``--gap-s`` apart:

- ``kill -9`` of one replica (a child process) of each actor kind in turn; its parent
  restarts it. ``restart_to_serving_s``: from the kill until a new instance of that
  actor answers ``$SRV.PING`` with all replicas of it there;
- ``kill -9`` of the NATS node leading JetStream's meta group, brought back a gap later
  (with ``--nodes`` >= 3);
- the local provider answers 429 with Retry-After, then 5xx, then stalls before the
  first token, then drops its streams mid-way; cloud stays healthy; then local heals.

Prints one JSON object with issue #19's keys. Those this part does not measure yet
are ``null`` and listed in ``not_measured`` (WebSocket clients and
one that never reads, ingest jobs and the audit trail checked during the run,
fuzzing). ``breaker_open_all_routers_s`` is not measured as such: a router replica's
breaker is inside its process; what is measured is ``breaker_open_bus_s``, from the
first 429 the local provider sent to the ``open`` transition on
``<prefix>.breaker.local``, which every router replica applies on receipt.

    python -m bench.chaos [--rate 4] [--gap-s 8] [--nodes 3] [--tokens 20]
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
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import structlog

from bench._jobs import ingested
from bench._stats import percentile
from bench.bridge import corpus
from ragbus.config import NatsSettings
from ragbus.runtime import ACCEPT_WAIT_S, Client, codec, connect, discover, wait_for_instances
from ragbus.runtime.cli import EmbeddedCluster, EmbeddedNats
from ragbus.runtime.connection import NATS
from ragbus.subjects import (
    BreakerState,
    BreakerTransition,
    Cancelled,
    Done,
    Failed,
    IngestRequest,
    Query,
    Subjects,
)
from tests.support.fake_openai import Behaviour, FakeOpenAI

S = Subjects()
#: actor -> replicas, in the order they are killed
ACTORS = {"embedder": 2, "retriever": 1, "context-trimmer": 2, "router": 2, "ingestor": 1,
          "audit-logger": 1}
NOT_MEASURED = ["ingest_jobs", "ingest_lost", "ingest_dup", "audit_events", "audit_lost",
                "audit_dup", "fuzz_messages", "fuzz_crashes", "fuzz_error_replies",
                "breaker_open_all_routers_s"]
FAULTS_NOT_RUN = ["bridge replicas and WebSocket clients",
                  "a WebSocket client that never reads", "a slow NATS consumer",
                  "ingest jobs and a third-party audit reader during the load", "fuzzing",
                  "a second retriever replica of the same shard", "cancels mid-stream"]


@dataclass(slots=True)
class Outcome:
    phase: str
    kind: str = "hung"  # done, failed, cancelled, hung
    code: str | None = None
    provider: str | None = None
    apology: bool = False
    ms: float = 0.0


@dataclass(slots=True)
class Run:
    nc: NATS
    timeout_s: float
    phase: str = "quiet"
    outcomes: list[Outcome] = field(default_factory=list)

    async def ask(self, question: str) -> None:
        out = Outcome(self.phase)
        self.outcomes.append(out)
        began = time.perf_counter()
        query = Query(question=question, reply_to=self.nc.new_inbox())
        # the stream gives up by itself at deadline + 0.5 s: a query still open 1 s after
        # its deadline is hung
        with anyio.move_on_after(self.timeout_s + 1):
            async with Client(self.nc).open_stream(S.query, query, timeout=self.timeout_s,
                                                   accept_within=ACCEPT_WAIT_S) as events:
                async for event in events:
                    if isinstance(event, Done):
                        out.kind, out.provider = "done", event.provider
                    elif isinstance(event, Failed):
                        out.kind, out.code = "failed", event.code.value
                        out.apology = event.message.startswith("Sorry")
                    elif isinstance(event, Cancelled):
                        out.kind = "cancelled"
        out.ms = (time.perf_counter() - began) * 1000


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


def _start(name: str, root: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``ragbus actor NAME --replicas N`` as deployed; its logs (JSON) under ``logs/``."""
    with (root / "logs" / f"{name}.log").open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "ragbus.runtime.cli", "actor", name,
             "--replicas", str(ACTORS[name])], cwd=root, env=env,
            stdout=subprocess.DEVNULL, stderr=sink)


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


async def _instances(nc: NATS, name: str) -> set[str]:
    return {str(s["id"]) for s in await discover(nc, "PING", wait_s=0.2)
            if s.get("name") == name}


async def _kill_and_time(nc: NATS, parents: dict[str, subprocess.Popen[bytes]],
                         name: str) -> float:
    """kill -9 one child of ``name``'s parent; seconds until all its replicas answer a
    ping again, one of them new."""
    before = await _instances(nc, name)
    victim = _children(parents[name].pid)[0]
    os.kill(victim, signal.SIGKILL)
    killed = time.perf_counter()
    with anyio.fail_after(120):
        while True:
            now = await discover(nc, "PING", wait_s=0.05,
                                 until=lambda a: len([s for s in a if s.get("name") == name])
                                 >= ACTORS[name])
            ids = {str(s["id"]) for s in now if s.get("name") == name}
            if len(ids) == ACTORS[name] and ids - before:
                return time.perf_counter() - killed


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


async def run(rate: float, gap_s: float, nodes: int, tokens: int,
              timeout_s: float) -> dict[str, Any]:
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
                   "RAGBUS_DATA_DIR": str(root / "data"), "RAGBUS_METRICS__ENABLED": "false",
                   "RAGBUS_LOGGING__LEVEL": "warning", "RAGBUS_LOGGING__FORMAT": "json"}
            (root / "logs").mkdir()
            parents = {name: _start(name, root, env) for name in ACTORS}
            nc = await connect_to(url)
            try:
                for name, replicas in ACTORS.items():
                    await wait_for_instances(nc, name, replicas, timeout_s=300)
                docs, questions = corpus(40)
                await ingested(nc, IngestRequest(documents=docs))
                result = await _chaos(nc, parents, local, questions, rate=rate, gap_s=gap_s,
                                      timeout_s=timeout_s,
                                      cluster=cluster if isinstance(cluster, EmbeddedCluster)
                                      else None)
            finally:
                for proc in parents.values():
                    proc.send_signal(signal.SIGTERM)
                for proc in parents.values():
                    await anyio.to_thread.run_sync(proc.wait)
                await nc.close()
        result["restart_delays_s"] = _restart_delays(root / "logs")
        return result


def _restart_delays(logs: Path) -> dict[str, list[float]]:
    """What each parent logged it waited before restarting a dead replica: the rest of
    ``restart_to_serving_s`` is the new process starting."""
    delays: dict[str, list[float]] = {}
    for name in ACTORS:
        for line in (logs / f"{name}.log").read_text().splitlines():
            if '"replica.died"' in line:
                delays.setdefault(name, []).append(json.loads(line)["restart_in_s"])
    return delays


async def connect_to(url: str) -> NATS:
    return await connect(NatsSettings(url=url), name="bench-chaos")


async def _chaos(nc: NATS, parents: dict[str, subprocess.Popen[bytes]], local: FakeOpenAI,
                 questions: list[str], *, rate: float, gap_s: float, timeout_s: float,
                 cluster: EmbeddedCluster | None) -> dict[str, Any]:
    load = Run(nc, timeout_s)
    restarts: dict[str, float] = {}
    rss_max = 0.0
    breaker = await nc.subscribe(S.breaker("local"))
    opened_at: list[float] = []
    stop = anyio.Event()

    async def send(tg: Any) -> None:
        i = 0
        start = time.perf_counter()
        while not stop.is_set():
            tg.start_soon(load.ask, questions[i % len(questions)])
            i += 1
            await anyio.sleep(max(0.0, start + i / rate - time.perf_counter()))

    async def sample_rss() -> None:
        nonlocal rss_max
        while not stop.is_set():
            pids = [pid for p in parents.values() for pid in (p.pid, *_children(p.pid))]
            rss_max = max([rss_max, *(_rss_mb(pid) for pid in pids)])
            await anyio.sleep(1)

    async def hear_breaker() -> None:
        async for msg in breaker.messages:
            t = codec.decode(msg.data, BreakerTransition)
            if t.state == BreakerState.OPEN:
                opened_at.append(time.perf_counter())

    async def phase(name: str, action: Callable[[], Any] | None = None) -> None:
        load.phase = name
        if action is not None:
            await action()
        await anyio.sleep(gap_s)

    async with anyio.create_task_group() as queries, anyio.create_task_group() as tg:
        tg.start_soon(send, queries)
        tg.start_soon(sample_rss)
        tg.start_soon(hear_breaker)
        await phase("quiet")
        for name in ACTORS:
            async def kill(name: str = name) -> None:
                restarts[name] = round(await _kill_and_time(nc, parents, name), 3)
            await phase(f"kill {name}", kill)
        if cluster is not None:
            victim: list[EmbeddedNats] = []

            async def kill_meta_leader() -> None:
                victim.append(await anyio.to_thread.run_sync(_meta_leader, cluster))
                await victim[0].kill()

            async def bring_back() -> None:
                await victim[0].restart()

            await phase("kill NATS meta leader", kill_meta_leader)
            await phase("NATS node back", bring_back)
        before = len(local.requests)
        healthy = local.behaviour

        async def rate_limited() -> None:
            local.behaviour = Behaviour.rate_limited(retry_after=str(max(1, int(gap_s / 4))))

        await phase("local 429", rate_limited)
        first_429 = [r.at for r in local.requests[before:]][:1]
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
        stop.set()
        tg.cancel_scope.cancel()
    await breaker.unsubscribe()
    out = load.outcomes
    open_after = [t - first_429[0] for t in opened_at if first_429 and t >= first_429[0]]
    phases = dict.fromkeys(o.phase for o in out)  # in the order they ran
    return {
        "queries": len(out),
        "answered": sum(o.kind == "done" for o in out),
        "failed_with_code": sum(o.kind == "failed" and o.code is not None for o in out),
        "cancelled": sum(o.kind == "cancelled" for o in out),
        "hung": sum(o.kind == "hung" for o in out),
        "apologies": sum(o.apology for o in out),
        "answered_after_fallback": sum(o.kind == "done" and o.provider != "local" for o in out),
        "breaker_open_all_routers_s": None,
        "restart_to_serving_s_max": max(restarts.values()) if restarts else None,
        "ingest_jobs": None, "ingest_lost": None, "ingest_dup": None,
        "audit_events": None, "audit_lost": None, "audit_dup": None,
        "fuzz_messages": None, "fuzz_crashes": None, "fuzz_error_replies": None,
        "rss_mb_max": round(rss_max),
        "not_measured": NOT_MEASURED,
        "faults_not_run": FAULTS_NOT_RUN,
        "breaker_open_bus_s": round(open_after[0], 3) if open_after else None,
        "restart_to_serving_s": restarts,
        "failed_codes": _codes(out),
        "phases": {name: _summary([o for o in out if o.phase == name]) for name in phases},
    }


def _codes(outcomes: list[Outcome]) -> dict[str, int]:
    codes: dict[str, int] = {}
    for o in outcomes:
        if o.code is not None:
            codes[o.code] = codes.get(o.code, 0) + 1
    return codes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=4.0, help="queries per second")
    parser.add_argument("--gap-s", type=float, default=8.0, help="seconds between faults")
    parser.add_argument("--nodes", type=int, default=3, help="NATS nodes (1: one server)")
    parser.add_argument("--tokens", type=int, default=20, help="tokens per provider answer")
    parser.add_argument("--timeout-s", type=float, default=10.0, help="each query's deadline")
    args = parser.parse_args()
    print(json.dumps(anyio.run(run, args.rate, args.gap_s, args.nodes, args.tokens,
                               args.timeout_s)))


if __name__ == "__main__":
    main()
