"""Which answer a piece of feedback rates: the router's ``answer.done`` for its request id.

The audit-logger sees every event, so it is where a rating (``rag.feedback``) meets
the answer it is about without anyone trusting the rater's word on the provider or
prompt version. Answers the logger has written are indexed by request id (the
newest ``audit.feedback_index`` of them); an older one is looked for in the store,
newest first, back to ``audit.feedback_lookback_s``; one not written yet (the rating
overtook the answer's event on the bus) is waited for a moment.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import msgspec

from ragbus.subjects import AuditEvent, AuditKind

from ._files import reverse_lines, store_files
from ._record import decode_line

__all__ = ("AnswerIndex", "Answered", "answered", "find_answer")

_event_decoder = msgspec.json.Decoder(AuditEvent)
_DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class Answered:
    """What feedback is linked to: who answered, with which prompt, from which cache."""

    request_id: str
    provider: str | None
    model: str | None
    prompt_version: str | None
    cache_hit: str  # "exact", "semantic" or "miss"
    session: str | None
    event_id: str

    def details(self) -> dict[str, Any]:
        return {"answer_event": self.event_id, "provider": self.provider, "model": self.model,
                "prompt_version": self.prompt_version, "cache_hit": self.cache_hit}


def answered(event: AuditEvent) -> Answered | None:
    """The answer an ``answer.done`` event records (None: another kind, or no request id)."""
    if event.kind != AuditKind.ANSWER_DONE or not event.request_id:
        return None
    d = event.details
    hit = d.get("cache_hit")
    return Answered(request_id=event.request_id, provider=_str(d.get("provider")),
                    model=_str(d.get("model")), prompt_version=_str(d.get("prompt_version")),
                    cache_hit=hit if hit in ("exact", "semantic") else "miss",
                    session=event.session, event_id=event.event_id)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def find_answer(directory: Path, request_id: str, since_ms: int) -> Answered | None:
    """The newest ``answer.done`` for ``request_id`` in the store, reading from its end
    back to ``since_ms`` (blocking: run it on a thread)."""
    needle = request_id.encode()
    for path in reversed(store_files(directory)):
        for line in reverse_lines(path):
            if needle not in line:  # most lines are about something else: skip decoding
                continue
            try:
                event = _event_decoder.decode(bytes(decode_line(line).event))
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            if event.request_id == request_id and (found := answered(event)) is not None:
                return found
        # files are named by the day written; an older file holds only older events
        if _day_start_ms(path) + _DAY_MS < since_ms:
            return None
    return None


def _day_start_ms(path: Path) -> int:
    day = datetime.strptime(path.name, "audit-%Y-%m-%d.jsonl").replace(tzinfo=UTC)
    return int(day.timestamp() * 1000)


class AnswerIndex:
    """The newest ``capacity`` answers by request id, and a way to wait for one."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._answers: OrderedDict[str, Answered] = OrderedDict()
        self._waiting: dict[str, anyio.Event] = {}

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, request_id: str) -> Answered | None:
        return self._answers.get(request_id)

    def add(self, answer: Answered) -> None:
        self._answers[answer.request_id] = answer
        self._answers.move_to_end(answer.request_id)
        while len(self._answers) > self.capacity:
            self._answers.popitem(last=False)
        waiting = self._waiting.pop(answer.request_id, None)
        if waiting is not None:
            waiting.set()

    async def wait(self, request_id: str, timeout_s: float) -> Answered | None:
        """The answer once it is added, or None after ``timeout_s``."""
        found = self.get(request_id)
        if found is not None or timeout_s <= 0:
            return found
        event = self._waiting.setdefault(request_id, anyio.Event())
        try:
            with anyio.move_on_after(timeout_s):
                await event.wait()
        finally:
            if not event.is_set() and self._waiting.get(request_id) is event:
                del self._waiting[request_id]
        return self.get(request_id)
