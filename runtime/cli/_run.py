"""What ``ragbus up`` and ``ragbus actor`` share: NATS, metrics, supervisor, signals."""

from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path

import anyio
import structlog
from anyio.abc import TaskStatus

from ragbus.config import Settings

from .. import tracing
from .._discovery import wait_for_instances
from ..actor import Actor
from ..metrics import Metrics
from ..security import connect_as, credentials, write_server_include
from ..supervisor import Supervisor
from ._server import EmbeddedCluster, EmbeddedNats
from ._state import RunInfo, clear_run_info, write_run_info

__all__ = ("Ready", "run_actors", "watch_parent", "watch_signals")

Ready = Callable[[str, int | None, list[str]], None]
#: how long ``up --processes`` waits for every child to answer (a model loads first)
START_TIMEOUT_S = 300.0


async def watch_signals(drain: Callable[[], None], force: Callable[[], None]) -> None:
    """First SIGINT/SIGTERM calls ``drain``; a second one calls ``force`` and returns."""
    log = structlog.get_logger()
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        count = 0
        async for sig in signals:
            count += 1
            if count == 1:
                log.info("shutdown.draining", signal=signal.Signals(sig).name)
                drain()
            else:
                log.warning("shutdown.forced", signal=signal.Signals(sig).name)
                force()
                return


async def watch_parent(parent_pid: int, drain: Callable[[], None], *,
                       every_s: float = 0.5) -> None:
    """Call ``drain`` once the parent ``parent_pid`` is gone (this process was re-parented).

    A supervised child is in a session of its own, so nothing else tells it that its
    parent was killed with -9; polling ``getppid`` works without a Linux-only ``prctl``,
    and half a second is soon enough for an orphan to leave its queue group.
    """
    while os.getppid() == parent_pid:  # noqa: ASYNC110 - no event to wait on
        await anyio.sleep(every_s)
    structlog.get_logger().warning("supervisor.gone", parent_pid=parent_pid)
    drain()


async def run_actors(
    settings: Settings,
    classes: Mapping[str, type[Actor]],
    *,
    embedded: bool,
    ephemeral: bool = False,
    nats_url: str | None = None,
    on_ready: Ready | None = None,
    cluster: int = 1,
    parent_pid: int | None = None,
    restarts: int = 0,
    processes: bool = False,
    config: str | None = None,
    child_env: Mapping[str, str] | None = None,
) -> None:
    """Run ``classes`` under a supervisor until a signal drains them.

    ``cluster`` > 1 (with ``embedded``) starts that many nats-server nodes clustered on
    loopback instead of one; every actor connects with all their URLs. A child of
    ``ragbus actor``'s supervising parent gets ``parent_pid`` (it drains when that
    parent is gone) and ``restarts``, how often the parent restarted this replica, the
    start of ``ragbus_actor_restarts_total``.

    ``processes`` (``ragbus up --processes``) runs each actor as ``ragbus actor NAME`` in a
    child process of its own instead (``config`` is passed on; ``child_env`` carries what
    the caller changed in the settings), restarted if it dies: an asyncio process is one
    core, and with every actor on one event loop a busy stage delays all the others,
    the first hop's refusals included (``bench.load --layout``).
    """
    metrics = Metrics()
    monitors: list[str] = []
    async with AsyncExitStack() as stack:
        traces = tracing.configure()  # on with OTEL_EXPORTER_OTLP_ENDPOINT and ragbus[otel]
        if traces is not None:
            stack.callback(traces.shutdown)  # last: the spans of the drain are sent too
        url = nats_url or settings.nats.url
        if embedded:
            nats_dir: Path | None = None
            if not (ephemeral or settings.nats.ephemeral):
                nats_dir = Path(settings.nats.data_dir or settings.data_root / "nats")
            include: Path | None = None
            if settings.security.enabled:  # one user per role, passwords from the settings
                auth_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="ragbus-auth-"))
                include = write_server_include(Path(auth_dir) / "users.conf", settings,
                                               settings.security)
            if cluster > 1:
                login = (credentials(settings.security, "admin").options()
                         if settings.security.enabled else {})
                login.pop("inbox_prefix", None)
                nodes = EmbeddedCluster(cluster, nats_dir, include=include, login=login,
                                        max_payload_bytes=settings.nats.max_payload_bytes)
                url = await nodes.start()
                monitors = [node.monitor_url for node in nodes.nodes]
                stack.push_async_callback(nodes.stop)
            else:
                server = EmbeddedNats(nats_dir, include=include,
                                      max_payload_bytes=settings.nats.max_payload_bytes)
                url = await server.start()
                stack.push_async_callback(server.stop)
        assert url is not None
        if restarts:
            for name in classes:
                metrics.restarts.labels(name).inc(restarts)
        metrics_port: int | None = None
        if settings.metrics.enabled and not processes:  # the children serve their own
            metrics_port, close = metrics.serve(settings.metrics.host, settings.metrics.port)
            stack.callback(close)
        if embedded:
            write_run_info(settings, RunInfo(nats_url=url, metrics_port=metrics_port,
                                             pid=os.getpid(), monitors=monitors))
            stack.callback(clear_run_info, settings)
        runtime = settings.runtime
        if processes:
            await _run_processes(settings, list(classes), url, config=config,
                                 child_env=child_env or {}, on_ready=on_ready)
            return
        factories = {
            name: partial(cls, settings, nats_url=url, metrics=metrics)
            for name, cls in classes.items()
        }
        supervisor = Supervisor(factories, backoff_initial_s=runtime.restart_backoff_initial_s,
                                backoff_max_s=runtime.restart_backoff_max_s,
                                healthy_after_s=runtime.restart_healthy_after_s,
                                metrics=metrics)
        async with anyio.create_task_group() as tg:

            async def supervise(*, task_status: TaskStatus[None]) -> None:
                await supervisor.run(task_status=task_status)
                tg.cancel_scope.cancel()  # drained: stop watching signals too

            tg.start_soon(watch_signals, supervisor.stop, tg.cancel_scope.cancel)
            if parent_pid is not None:
                tg.start_soon(watch_parent, parent_pid, supervisor.stop)
            await tg.start(supervise)
            if on_ready is not None:
                on_ready(url, metrics_port, list(classes))


async def _run_processes(settings: Settings, names: list[str], url: str, *,
                         config: str | None, child_env: Mapping[str, str],
                         on_ready: Ready | None) -> None:
    from ._replicas import run_processes

    m, rt = settings.metrics, settings.runtime
    log = structlog.get_logger().bind(component="up")

    async def ready() -> None:
        """Say ``up`` once every child answers a ping (models loaded, stores open)."""
        nc = await connect_as(settings.nats, settings.security, "admin", url=url,
                              name="ragbus-up")
        try:
            for name in names:
                await wait_for_instances(nc, name, 1, timeout_s=START_TIMEOUT_S)
        except TimeoutError:
            log.error("up.not_serving", actors=names, timeout_s=START_TIMEOUT_S)
            return
        finally:
            await nc.close()
        if on_ready is not None:
            on_ready(url, None, names)

    await run_processes(
        names, config=config, env={**child_env, "RAGBUS_NATS__URL": url},
        metrics_port=m.port if m.enabled and m.port else None,
        backoff=(rt.restart_backoff_initial_s, rt.restart_backoff_max_s,
                 rt.restart_healthy_after_s),
        warm_spare=rt.warm_spare, ready=ready)
