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

With ``runtime.warm_spare`` (the default) the parent also keeps one spare child
that has done a replica's imports (and its actor's prewarm, the embedder's model
loads) and waits (``_spare``); a dead replica's successor is that spare, so it skips
the second or more of importing and loading and serves sooner, and a new spare is
started a few seconds later, off the recovery's path.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence

import anyio
import structlog
from anyio.abc import Process

from .._backoff import Backoff
from ._run import watch_signals
from ._spare import order_line, spare_argv

__all__ = ("child_argv", "exit_status", "run_processes", "run_replicas")


def exit_status(code: int | None) -> dict[str, object]:
    """A child's end as log fields: its exit code, or the signal that killed it."""
    if code is not None and code < 0:
        try:
            return {"signal": signal.Signals(-code).name}
        except ValueError:
            return {"signal": -code}
    return {"code": code}


#: how a replica's command line starts (``child_argv``); what follows is what a spare runs
_CLI = [sys.executable, "-m", "ragbus.runtime.cli"]


def _ragbus_args(argv: Sequence[str]) -> list[str] | None:
    """``argv`` without the interpreter and module, if it is a ``ragbus`` command line."""
    return list(argv[len(_CLI):]) if list(argv[:len(_CLI)]) == _CLI else None


class _Replicas:
    def __init__(self, argvs: Sequence[Sequence[str]], envs: Sequence[Mapping[str, str]], *,
                 backoff: tuple[float, float, float], spare: Sequence[str] = (),
                 spare_after_s: float = 3.0) -> None:
        """``spare``: the actors a warm spare imports for (none: no spare);
        ``spare_after_s``: how long after a spare is taken the next one starts."""
        self.argvs = [list(argv) for argv in argvs]
        self.envs = envs
        self.backoff = backoff
        self.spare_names = list(spare)
        self.spare_after_s = spare_after_s
        self.processes: dict[int, Process] = {}
        self.restarts: dict[int, int] = {}
        self.codes: dict[int, int | None] = {}
        self.spare: Process | None = None
        self._spare_taken = anyio.Event()
        self.stopping = anyio.Event()
        self.log = structlog.get_logger().bind(component="replicas")

    async def keep(self, i: int) -> None:
        """Run replica ``i`` until a stop, starting it again whenever it dies."""
        backoff = Backoff(*self.backoff)
        restarts = 0
        while not self.stopping.is_set():
            started = anyio.current_time()
            argv, env = [*self.argvs[i], "--restarts", str(restarts)], dict(self.envs[i])
            process = await self._take_spare(argv, env) if restarts else None
            spared = process is not None
            if process is None:
                process = await anyio.open_process(
                    argv, env=env, stdin=None, stdout=None, stderr=None,
                    start_new_session=True)
            self.processes[i] = process
            self.restarts[i] = restarts
            if self.stopping.is_set():  # the drain came while it was starting
                process.send_signal(signal.SIGTERM)
            self.log.info("replica.started", replica=i, pid=process.pid, restarts=restarts,
                          spare=spared)
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

    async def keep_spare(self) -> None:
        """Keep one warm spare waiting until a stop (see ``_spare``): a new one
        ``spare_after_s`` after one is taken, and again (with backoff) if one dies."""
        backoff = Backoff(*self.backoff)
        while not self.stopping.is_set():
            started = anyio.current_time()
            self._spare_taken = taken = anyio.Event()
            spare = await anyio.open_process(
                spare_argv(self.spare_names, _ragbus_args(self.argvs[0]) or ()),
                env=dict(self.envs[0]), stdin=subprocess.PIPE,
                stdout=None, stderr=None, start_new_session=True)
            self.spare = spare
            async with anyio.create_task_group() as tg:
                async def ended(spare: Process = spare) -> None:
                    await spare.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(ended)
                await taken.wait()
                tg.cancel_scope.cancel()
            if self.stopping.is_set():
                if spare.returncode is None:
                    spare.send_signal(signal.SIGTERM)
                with anyio.move_on_after(5):
                    await spare.wait()
                return
            if taken.is_set():
                delay = self.spare_after_s
            else:
                self.spare = None
                delay = backoff.after(anyio.current_time() - started)
                self.log.warning("spare.died", pid=spare.pid, restart_in_s=delay,
                                 **exit_status(spare.returncode))
            with anyio.move_on_after(delay):
                await self.stopping.wait()

    async def _take_spare(self, argv: list[str], env: dict[str, str]) -> Process | None:
        """The waiting spare, told to become ``argv`` under ``env``; None if there is none
        (or ``argv`` is not a ``ragbus`` command line, which a spare cannot become)."""
        spare, args = self.spare, _ragbus_args(argv)
        if spare is None or spare.returncode is not None or spare.stdin is None or args is None:
            return None
        self.spare = None
        try:
            await spare.stdin.send(order_line(args, env))
            await spare.stdin.aclose()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            return None  # it died just now: a plain start instead
        finally:
            self._spare_taken.set()
        return spare

    def drain(self) -> None:
        self.stopping.set()
        self._spare_taken.set()
        self.signal_all(signal.SIGTERM)

    def kill(self) -> None:
        self.signal_all(signal.SIGKILL)

    def signal_all(self, sig: signal.Signals) -> None:
        for process in [*self.processes.values(), *([self.spare] if self.spare else [])]:
            if process.returncode is None:
                process.send_signal(sig)


def child_argv(name: str, *, config: str | None) -> list[str]:
    """How the parent starts a replica (``--restarts`` is added per start)."""
    return [sys.executable, "-m", "ragbus.runtime.cli",
            *(["--config", config] if config else []),
            "actor", name, "--no-supervise", "--child-of", str(os.getpid())]


async def run_replicas(name: str, count: int, *, config: str | None,
                       metrics_port: int | None, backoff_initial_s: float = 0.5,
                       backoff_max_s: float = 30.0, healthy_after_s: float = 10.0,
                       warm_spare: bool = False) -> int:
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
                         backoff=(backoff_initial_s, backoff_max_s, healthy_after_s),
                         spare=[name] if warm_spare else ())
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
            if replicas.spare_names:
                kept.start_soon(replicas.keep_spare)
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
                        backoff: tuple[float, float, float], warm_spare: bool = False,
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
                         backoff=backoff, spare=names if warm_spare else ())
    return await _keep_all(replicas, len(names), ready)

