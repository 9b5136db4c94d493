"""bench.chaos's fuzzing: malformed messages on every subject ragbus listens on.

The subjects and their message types are read from the actors' own endpoint
declarations (class-level: nothing is started here), plus what listens beside the
kernel's endpoints, as tests/actors/test_fuzz.py does against in-process actors; the
messages come from tests/support/fuzz.py. Only malformed ones are sent: a
well-formed message of random content is a real command (delete documents, restore a
shard from a snapshot), which would wreck the very state the run checks afterwards.
Every other shot carries a reply subject; one sent to a core endpoint must get an
error reply with the code its malformation calls for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio
import msgspec
from nats.aio.msg import Msg

from ragbus.actors import ACTORS, load_actor
from ragbus.runtime.connection import NATS
from ragbus.subjects import ERROR_HEADER, AuditEvent, BreakerTransition, Cancel, Subjects
from tests.support.fuzz import Shot, Target, shots

__all__ = ("FuzzRun", "fuzz_targets")


def fuzz_targets(s: Subjects) -> list[Target]:
    others: dict[str, type[msgspec.Struct]] = {
        s.cancel_all: Cancel, s.breaker_all: BreakerTransition, s.audit_all: AuditEvent}
    found: dict[str, Target] = {}
    for name in ACTORS:
        for spec in load_actor(name).endpoint_specs():
            subject = spec.subject(s)
            found[subject] = Target(subject, spec.request, answers=spec.durable is None)
    for subject, message in others.items():
        found.setdefault(subject, Target(subject, message, answers=False))
    return [found[k] for k in sorted(found)]


@dataclass
class FuzzRun:
    """Fires ``n`` shots at full speed and counts the error replies."""

    nc: NATS
    subjects: Subjects
    n: int
    limit: int
    replies: dict[int, str | None] = field(default_factory=dict)
    plan: list[tuple[Shot, bool]] = field(default_factory=list)
    publish_errors: int = 0
    _sub: Any = None

    async def fire(self, seed: int = 19) -> None:
        inbox = f"_INBOX.chaosfuzz.{self.nc.new_inbox().rsplit('.', 1)[-1]}"

        async def on_reply(msg: Msg) -> None:
            code = msg.headers.get(ERROR_HEADER) if msg.headers else None
            self.replies[int(msg.subject.rsplit(".", 1)[1])] = code

        sub = await self.nc.subscribe(f"{inbox}.*", cb=on_reply)
        self._sub = sub
        fired = shots(fuzz_targets(self.subjects), self.n, seed=seed, limit=self.limit,
                      valid_share=0.0)
        for i, shot in enumerate(fired):
            asked = i % 2 == 0
            self.plan.append((shot, asked))
            try:
                await self.nc.publish(shot.subject, shot.fuzz.data,
                                      reply=f"{inbox}.{i}" if asked else "")
            except Exception:  # a node down: the shot did not go out
                self.publish_errors += 1
        await self.nc.flush()

    def awaited(self) -> list[int]:
        return [i for i, (shot, asked) in enumerate(self.plan)
                if asked and shot.target.answers and shot.fuzz.expect is not None]

    async def settle(self, wait_s: float) -> None:
        """Until every awaited reply is in, or ``wait_s`` is over."""
        with anyio.move_on_after(wait_s):
            while any(i not in self.replies for i in self.awaited()):  # noqa: ASYNC110
                await anyio.sleep(0.2)
        await self._sub.unsubscribe()

    def counts(self) -> dict[str, int]:
        awaited = self.awaited()
        right = sum(self.replies.get(i) == self.plan[i][0].fuzz.expect.value  # type: ignore[union-attr]
                    for i in awaited)
        return {"messages": len(self.plan), "awaiting_reply": len(awaited),
                "error_replies": sum(self.replies.get(i) is not None for i in awaited),
                "right_code": right,
                "no_reply": sum(i not in self.replies for i in awaited),
                "internal": sum(c == "INTERNAL" for c in self.replies.values()),
                "publish_errors": self.publish_errors}
