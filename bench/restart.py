"""How long a killed actor process takes to serve again, with and without a warm spare.

Each actor runs as deployed, ``ragbus actor NAME`` (a supervising parent and one
child), on an embedded nats-server. Its child is killed with ``kill -9`` and the
time until a new instance answers ``$SRV.PING`` is taken, ``--kills`` times per
actor, once with ``runtime.warm_spare`` on (the default: the successor is a spare
that already did its imports) and once off (a fresh ``python -m ragbus.runtime.cli``),
interleaved kill by kill so machine noise falls on both alike. Between two kills the
bench waits until the parent has a spare waiting again, imports done (a new spare
is started 3 s after the last one was taken), so each kill with the spare on meets
the state a long-running deployment is in. The children run with
``runtime.restart_healthy_after_s`` 1: a replica that dies within that time of its
start waits out the crash-loop backoff (0.5 s first) before its successor starts,
and a replica of this bench is killed seconds after its start, where a deployed one
has usually run long.

Issue #19's ``restart_to_serving_s_max`` target is 2 s. ``bench.chaos`` measures the
same under load and faults; this bench isolates the restart itself, on whatever
load the machine has (``load_avg`` says what it was).

    python -m bench.restart [--kills 3] [--actors embedder,retriever,router]
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
from typing import Any

import anyio
import structlog
from anyio.abc import Process

from bench._stats import dumps, percentile
from ragbus.config import NatsSettings
from ragbus.runtime import connect, discover, wait_for_instances
from ragbus.runtime.cli import EmbeddedNats, spare_state
from ragbus.runtime.connection import NATS

ACTORS = ("embedder", "retriever", "context-trimmer", "router")


def _started_by(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


async def _ids(nc: NATS, name: str) -> set[str]:
    return {str(s["id"]) for s in await discover(nc, "PING", wait_s=0.05)
            if s.get("name") == name}


async def _kill_and_time(nc: NATS, parent: int, name: str, spare: bool) -> float:
    with anyio.fail_after(120):  # a long-running deployment has its spare waiting
        while spare and "ready" not in map(spare_state, _started_by(parent)):  # noqa: ASYNC110
            await anyio.sleep(0.1)
    before = await _ids(nc, name)
    (victim,) = [p for p in _started_by(parent) if spare_state(p) is None]
    os.kill(victim, signal.SIGKILL)
    killed = time.perf_counter()
    with anyio.fail_after(120):
        while not ((now := await _ids(nc, name)) and now - before):
            pass  # each look waits 50 ms for answers
    return time.perf_counter() - killed


async def run(kills: int, actors: list[str]) -> dict[str, Any]:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    with tempfile.TemporaryDirectory(prefix="ragbus-restart-") as tmp:
        async with EmbeddedNats() as server:
            nc = await connect(NatsSettings(url=server.url), name="bench-restart")
            times: dict[str, dict[str, list[float]]] = {}
            try:
                for name in actors:
                    parents: dict[str, Process] = {}
                    for mode in ("spare", "cold"):
                        env = {**os.environ, "RAGBUS_NATS__URL": server.url,
                               "RAGBUS_METRICS__ENABLED": "false",
                               "RAGBUS_RUNTIME__WARM_SPARE": str(mode == "spare").lower(),
                               "RAGBUS_RETRIEVER__DATA_DIR": f"{tmp}/{name}-{mode}",
                               "RAGBUS_EMBEDDER__CACHE": "false",
                               # a replica killed young restarts after a backoff (a crash
                               # loop guard); this bench times the restart itself
                               "RAGBUS_RUNTIME__RESTART_HEALTHY_AFTER_S": "1"}
                        parents[mode] = await anyio.open_process(
                            [sys.executable, "-m", "ragbus.runtime.cli", "actor", name],
                            env=env, cwd=tmp, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
                    try:
                        await wait_for_instances(nc, name, 2, timeout_s=300)
                        per = times[name] = {"spare": [], "cold": []}
                        for _ in range(kills):
                            for mode, parent in parents.items():
                                per[mode].append(await _kill_and_time(
                                    nc, parent.pid, name, mode == "spare"))
                                await wait_for_instances(nc, name, 2, timeout_s=300)
                    finally:
                        for parent in parents.values():
                            parent.send_signal(signal.SIGTERM)
                        for parent in parents.values():
                            with anyio.move_on_after(60):
                                await parent.wait()
                            if parent.returncode is None:
                                parent.kill()
            finally:
                await nc.close()
    every = {mode: [t for per in times.values() for t in per[mode]] for mode in ("spare", "cold")}
    return {
        "kills_per_actor": kills,
        "restart_to_serving_s_max": round(max(every["spare"]), 3),
        "restart_to_serving_s_max_cold": round(max(every["cold"]), 3),
        "restart_to_serving_s_p50": round(percentile(every["spare"], 50), 3),
        "restart_to_serving_s_p50_cold": round(percentile(every["cold"], 50), 3),
        "per_actor_s_max": {name: {mode: round(max(ts), 3) for mode, ts in per.items()}
                            for name, per in times.items()},
        "load_avg": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=3, help="kills per actor and mode")
    parser.add_argument("--actors", default=",".join(ACTORS),
                        help="comma-separated actor names")
    args = parser.parse_args()
    print(dumps(anyio.run(run, args.kills, args.actors.split(","))))


if __name__ == "__main__":
    main()
