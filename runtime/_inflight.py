"""Work in progress, by request id, so a Cancel can reach it."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio

__all__ = ("InFlight", "Work")


@dataclass(eq=False, slots=True)
class Work:
    request_id: str
    scope: anyio.CancelScope
    cancel_requested: bool = False
    stopping: bool = False
    reason: str = ""
    aliases: list[str] = field(default_factory=list)


@dataclass(slots=True)
class InFlight:
    """Several pieces of work may share an id (a fan-out), so each id maps to a set."""

    _by_id: dict[str, set[Work]] = field(default_factory=dict)
    _count: int = 0
    _idle: anyio.Event = field(default_factory=anyio.Event)

    def __post_init__(self) -> None:
        self._idle.set()

    def __len__(self) -> int:
        return self._count

    def add(self, request_id: str, scope: anyio.CancelScope) -> Work:
        work = Work(request_id, scope)
        self._by_id.setdefault(request_id, set()).add(work)
        if self._count == 0:
            self._idle = anyio.Event()
        self._count += 1
        return work

    def alias(self, work: Work, other_id: str) -> None:
        """Let a Cancel for ``other_id`` reach ``work`` too (an ingest job: its job id)."""
        if other_id != work.request_id and other_id not in work.aliases:
            work.aliases.append(other_id)
            self._by_id.setdefault(other_id, set()).add(work)

    def remove(self, work: Work) -> None:
        works = self._by_id.get(work.request_id)
        if works is None or work not in works:
            return
        for key in (work.request_id, *work.aliases):
            found = self._by_id.get(key)
            if found is not None:
                found.discard(work)
                if not found:
                    del self._by_id[key]
        self._count -= 1
        if self._count == 0:
            self._idle.set()

    def cancel(self, request_id: str, reason: str = "") -> int:
        """Cancel every piece of work for ``request_id``; returns how many were running."""
        works = self._by_id.get(request_id, ())
        for work in works:
            work.cancel_requested = True
            work.reason = reason
            work.scope.cancel()
        return len(works)

    def cancel_all(self) -> None:
        """Cancel everything because the actor is stopping (not because anyone asked)."""
        for works in list(self._by_id.values()):
            for work in works:
                work.stopping = True
                work.scope.cancel()

    async def wait_idle(self) -> None:
        await self._idle.wait()
