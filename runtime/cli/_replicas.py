"""``ragbus actor NAME [--replicas N]``: one actor in N child processes, kept running.

A process cannot restart itself once it is killed: with the actor in the
command's own process, a ``kill -9`` (or an out-of-memory kill) left nothing to
bring it back (issue #19 measured exactly that). So the command is a small
parent that runs each replica as ``ragbus actor NAME --no-supervise`` in a child
process and starts a dead one again: at once if it had run healthily, with
exponential backoff if it keeps dying at start. Each child is in a session of its
own, so a terminal's Ctrl-C reaches only this parent, which passes on exactly one
drain signal and exits when the children have drained.

An asyncio process uses one core. An actor whose work is Python (the router
relaying streams, the trimmer counting tokens) saturates that core long before
the machine is busy; replicas of it share a queue group, so NATS spreads the
requests over them, and what they must agree on (breakers, caches, jobs) is
already shared over the bus.

The parent serves no metrics (a child has the port); it passes each child how
often its replica was restarted (the hidden ``--restarts``), and the child starts
``ragbus_actor_restarts_total`` there, so the counter and its alert see process
restarts too. The child also watches that this parent is alive (``--child-of``)
and drains itself if it is not: a parent killed with ``-9`` leaves no orphans.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence

import anyio
import structlog
from anyio.abc import Process

from .._backoff import Backoff
from ._run import watch_signals

__all__ = ("child_argv", "exit_status", "run_processes", "run_replicas")


def exit_status(code: int | None) -> dict[str, object]:
    """A child's end as log fields: its exit code, or the signal that killed it."""
    if code is not None and code < 0:
        try:
            return {"signal": signal.Signals(-code).name}
        except ValueError:
            return {"signal": -code}
    return {"code": code}


class _Replicas:
    def __init__(self, argvs: Sequence[Sequence[str]], envs: Sequence[Mapping[str, str]], *,
                 backoff: tuple[float, float, float]) -> None:
        self.argvs = [list(argv) for argv in argvs]
        self.envs = envs
        self.backoff = backoff
        self.processes: dict[int, Process] = {}
        self.restarts: dict[int, int] = {}
        self.codes: dict[int, int | None] = {}
        self.stopping = anyio.Event()
        self.log = structlog.get_logger().bind(component="replicas")

    async def keep(self, i: int) -> None:
        """Run replica ``i`` until a stop, starting it again whenever it dies."""
        backoff = Backoff(*self.backoff)
        restarts = 0
        while not self.stopping.is_set():
            started = anyio.current_time()
            process = await anyio.open_process(
                [*self.argvs[i], "--restarts", str(restarts)], env=dict(self.envs[i]),
                stdin=None, stdout=None, stderr=None, start_new_session=True)
            self.processes[i] = process
            self.restarts[i] = restarts
            if self.stopping.is_set():  # the drain came while it was starting
                process.send_signal(signal.SIGTERM)
            self.log.info("replica.started", replica=i, pid=process.pid, restarts=restarts)
            code = await process.wait()
            self.codes[i] = code
            if self.stopping.is_set():
                self.log.info("replica.stopped", replica=i, pid=process.pid, **exit_status(code))
                return
            ran_s = anyio.current_time() - started
            delay = backoff.after(ran_s)
            self.log.warning("replica.died", replica=i, pid=process.pid, ran_s=round(ran_s, 3),
                             restart_in_s=delay, **exit_status(code))
            with anyio.move_on_after(delay):  # a drain must not wait out a long backoff
                await self.stopping.wait()
            restarts += 1

    def drain(self) -> None:
        self.stopping.set()
        self.signal_all(signal.SIGTERM)

    def kill(self) -> None:
        self.signal_all(signal.SIGKILL)

    def signal_all(self, sig: signal.Signals) -> None:
        for process in self.processes.values():
            if process.returncode is None:
                process.send_signal(sig)


def child_argv(name: str, *, config: str | None) -> list[str]:
    """How the parent starts a replica (``--restarts`` is added per start)."""
    return [sys.executable, "-m", "ragbus.runtime.cli",
            *(["--config", config] if config else []),
            "actor", name, "--no-supervise", "--child-of", str(os.getpid())]


async def run_replicas(name: str, count: int, *, config: str | None,
                       metrics_port: int | None, backoff_initial_s: float = 0.5,
                       backoff_max_s: float = 30.0, healthy_after_s: float = 10.0) -> int:
    """Run ``count`` processes of actor ``name`` until a signal drains them.

    Returns the exit status for the command: 0 when every replica drained cleanly,
    else the first replica's non-zero code (128 + N for a replica killed by signal N).
    With ``metrics_port`` (metrics on, a fixed port), replica ``i`` serves its
    metrics on ``metrics_port + i``: processes on one host cannot share a port.
    """
    envs = []
    for i in range(count):
        env = dict(os.environ)
        if metrics_port is not None:
            env["RAGBUS_METRICS__PORT"] = str(metrics_port + i)
        envs.append(env)
    replicas = _Replicas([child_argv(name, config=config)] * count, envs,
                         backoff=(backoff_initial_s, backoff_max_s, healthy_after_s))
    return await _keep_all(replicas, count)


async def _keep_all(replicas: _Replicas, count: int,
                    ready: Callable[[], Awaitable[None]] | None = None) -> int:
    """Keep every child running until a signal drains them; ``ready`` runs once they
    are started. The exit status as :func:`run_replicas` says."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch_signals, replicas.drain, replicas.kill)
        async with anyio.create_task_group() as kept:
            for i in range(count):
                kept.start_soon(replicas.keep, i)
            if ready is not None:
                await ready()
        tg.cancel_scope.cancel()  # every replica drained: stop watching signals too
    for i in range(count):
        code = replicas.codes.get(i)
        if code:
            return 128 - code if code < 0 else code
    return 0


async def run_processes(names: Sequence[str], *, config: str | None,
                        env: Mapping[str, str], metrics_port: int | None,
                        backoff: tuple[float, float, float],
                        ready: Callable[[], Awaitable[None]] | None = None) -> int:
    """``ragbus up --processes``: each actor of ``names`` in a child process of its own,
    kept running as ``ragbus actor`` keeps its replicas. ``env`` is what every child
    gets on top of this process's environment (where the bus is, what ``up`` changed in
    the settings); with ``metrics_port`` the actor ``i`` serves on ``metrics_port + i``.
    """
    envs = []
    for i in range(len(names)):
        child = {**os.environ, **env}
        if metrics_port is not None:
            child["RAGBUS_METRICS__PORT"] = str(metrics_port + i)
        envs.append(child)
    replicas = _Replicas([child_argv(name, config=config) for name in names], envs,
                         backoff=backoff)
    return await _keep_all(replicas, len(names), ready)

