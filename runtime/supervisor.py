"""Run many actors in one process and keep them running.

An actor whose ``serve()`` raises (its set-up failed, its connection died for
good) is restarted with exponential backoff; the reason is logged. A stop
request drains every actor concurrently.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import anyio
import structlog
from anyio.abc import TaskStatus

from ._backoff import Backoff
from .actor import Actor
from .metrics import Metrics

__all__ = ("Supervisor",)

ActorFactory = Callable[[], Actor]


@dataclass(slots=True)
class _Slot:
    name: str
    factory: ActorFactory
    actor: Actor | None = None
    restarts: int = 0
    started: anyio.Event | None = None


class Supervisor:
    def __init__(
        self,
        factories: Mapping[str, ActorFactory],
        *,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        healthy_after_s: float = 30.0,
        metrics: Metrics | None = None,
    ) -> None:
        self._slots = {name: _Slot(name, f) for name, f in factories.items()}
        self._backoff = (backoff_initial_s, backoff_max_s, healthy_after_s)
        self._stopping = anyio.Event()
        self.metrics = metrics
        self.log = structlog.get_logger().bind(component="supervisor")

    def restarts(self, name: str) -> int:
        return self._slots[name].restarts

    def actor(self, name: str) -> Actor | None:
        return self._slots[name].actor

    def stop(self) -> None:
        """Drain every actor; :meth:`run` returns once they have all stopped."""
        self._stopping.set()
        for slot in self._slots.values():
            if slot.actor is not None:
                slot.actor.request_stop()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start every actor; ``task_status.started()`` once each has served once."""
        async with anyio.create_task_group() as tg:
            for slot in self._slots.values():
                slot.started = anyio.Event()
                tg.start_soon(self._keep_running, slot)
            for slot in self._slots.values():
                assert slot.started is not None
                await slot.started.wait()
            task_status.started()
            await self._stopping.wait()  # even with no actors, run until told to stop

    async def _keep_running(self, slot: _Slot) -> None:
        backoff = Backoff(*self._backoff)
        while not self._stopping.is_set():
            actor = slot.factory()
            slot.actor = actor
            began = anyio.current_time()
            try:
                async with anyio.create_task_group() as tg:
                    await tg.start(actor.serve)
                    if slot.started is not None:
                        slot.started.set()
                    if self._stopping.is_set():
                        actor.request_stop()
            except Exception as exc:
                delay = backoff.after(anyio.current_time() - began)
                root = _first_leaf(exc)
                reason = f"{type(root).__name__}: {root}"
                self.log.error("actor.crashed", actor=slot.name, reason=reason,
                               restart_in_s=delay, exc_info=exc)
            else:
                if self._stopping.is_set():
                    return
                delay = backoff.after(anyio.current_time() - began)
                self.log.warning("actor.exited", actor=slot.name, restart_in_s=delay)
            with anyio.move_on_after(delay):
                await self._stopping.wait()
            if self._stopping.is_set():
                if slot.started is not None:
                    slot.started.set()
                return
            slot.restarts += 1
            if self.metrics is not None:
                self.metrics.restarts.labels(slot.name).inc()


def _first_leaf(exc: BaseException) -> BaseException:
    """The real error inside task-group wrapping, for a log line a person can read."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
