"""Restart delays shared by the in-process supervisor and the process replicas.

Something that keeps dying should not be restarted in a tight loop (it would
flood the logs and the bus with connects), but something that ran fine for a
while and then died once should come back at once: with no delay at all (a
killed process is back as fast as it starts, which is what the chaos bench's
restart-to-serving target needs), and not after the long delay an earlier bad
spell built up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ("Backoff",)


@dataclass(slots=True)
class Backoff:
    """Doubling delays up to ``max_s``; none after a healthy run, then ``initial_s`` again."""

    initial_s: float = 0.5
    max_s: float = 30.0
    healthy_after_s: float = 30.0
    _next: float = field(init=False)

    def __post_init__(self) -> None:
        if self.initial_s < 0 or self.max_s < self.initial_s:
            raise ValueError(f"backoff needs 0 <= initial_s <= max_s, got "
                             f"initial_s={self.initial_s}, max_s={self.max_s}")
        self._next = self.initial_s

    def after(self, ran_s: float) -> float:
        """The wait before the next start, given how long the last run lasted."""
        if ran_s >= self.healthy_after_s:
            self._next = self.initial_s
            return 0.0  # a death after a healthy run is news, not a crash loop
        delay = self._next
        self._next = min(delay * 2, self.max_s)
        return delay
