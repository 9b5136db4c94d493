"""``ragbus actor NAME --replicas N``: one actor in N processes, kept running.

An asyncio process uses one core. An actor whose work is Python (the router
relaying streams, the trimmer counting tokens) saturates that core long before
the machine is busy; replicas of it share a queue group, so NATS spreads the
requests over them, and what they must agree on (breakers, caches, jobs) is
already shared over the bus. This runs the replicas as one command: each is
``ragbus actor NAME`` in a child process of its own session (so a terminal's
Ctrl-C reaches only this parent, which passes on exactly one drain signal); a
replica that dies is started again with exponential backoff.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping, Sequence

import anyio
import structlog
from anyio.abc import Process

from .._backoff import Backoff
from ._run import watch_signals

__all__ = ("run_replicas",)


class _Replicas:
    def __init__(self, argv: Sequence[str], envs: Sequence[Mapping[str, str]], *,
                 backoff: tuple[float, float, float]) -> None:
        self.argv = list(argv)
        self.envs = envs
        self.backoff = backoff
        self.processes: dict[int, Process] = {}
        self.stopping = anyio.Event()
        self.log = structlog.get_logger().bind(component="replicas")

    async def keep(self, i: int) -> None:
        """Run replica ``i`` until a stop, starting it again whenever it dies."""
        backoff = Backoff(*self.backoff)
        while not self.stopping.is_set():
            started = anyio.current_time()
            process = await anyio.open_process(self.argv, env=dict(self.envs[i]),
                                               stdin=None, stdout=None, stderr=None,
                                               start_new_session=True)
            self.processes[i] = process
            if self.stopping.is_set():  # the drain came while it was starting
                process.send_signal(signal.SIGTERM)
            self.log.info("replica.started", replica=i, pid=process.pid)
            code = await process.wait()
            if self.stopping.is_set():
                self.log.info("replica.stopped", replica=i, code=code)
                return
            delay = backoff.after(anyio.current_time() - started)
            self.log.warning("replica.died", replica=i, code=code, restart_in_s=delay)
            with anyio.move_on_after(delay):  # a drain must not wait out a long backoff
                await self.stopping.wait()

    def drain(self) -> None:
        self.stopping.set()
        self.signal_all(signal.SIGTERM)

    def kill(self) -> None:
        self.signal_all(signal.SIGKILL)

    def signal_all(self, sig: signal.Signals) -> None:
        for process in self.processes.values():
            if process.returncode is None:
                process.send_signal(sig)


async def run_replicas(name: str, count: int, *, config: str | None,
                       metrics_port: int | None, backoff_initial_s: float = 0.5,
                       backoff_max_s: float = 30.0, healthy_after_s: float = 30.0) -> None:
    """Run ``count`` processes of actor ``name`` until a signal drains them.

    With ``metrics_port`` (metrics on, a fixed port), replica ``i`` serves its
    metrics on ``metrics_port + i``: processes on one host cannot share a port.
    """
    argv = [sys.executable, "-m", "ragbus.runtime.cli",
            *(["--config", config] if config else []), "actor", name]
    envs = []
    for i in range(count):
        env = dict(os.environ)
        if metrics_port is not None:
            env["RAGBUS_METRICS__PORT"] = str(metrics_port + i)
        envs.append(env)
    replicas = _Replicas(argv, envs,
                         backoff=(backoff_initial_s, backoff_max_s, healthy_after_s))
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch_signals, replicas.drain, replicas.kill)
        async with anyio.create_task_group() as kept:
            for i in range(count):
                kept.start_soon(replicas.keep, i)
        tg.cancel_scope.cancel()  # every replica drained: stop watching signals too
