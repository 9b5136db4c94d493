"""Per-provider request rate limits (e.g. Groq's free tier: 30 a minute).

A request that finds no capacity goes to the next provider instead of waiting:
waiting would spend the caller's deadline, and the next provider is usually
faster than a minute. A limit is the provider's (it counts per API key, not per
process), so the router replicas that are running split it: each takes
``limit / replicas``, recounted as replicas come and go (:meth:`RateLimits.share`).
An uneven spread of requests can leave some of the limit unused; it never lets
the replicas together go over it.
"""

from __future__ import annotations

from aiolimiter import AsyncLimiter

__all__ = ("RateLimits",)


def _limiter(per_minute: float) -> AsyncLimiter:
    # a share under one a minute still lets one request through, less often
    burst = max(1.0, per_minute)
    return AsyncLimiter(burst, 60.0 * burst / per_minute)


class RateLimits:
    """One leaky bucket per limited provider; unlimited providers always pass."""

    def __init__(self, per_minute: dict[str, int | None]) -> None:
        self._per_minute = {name: limit for name, limit in per_minute.items() if limit}
        self.replicas = 1
        self._limiters = self._split()

    @property
    def limited(self) -> bool:
        """Whether any provider has a limit."""
        return bool(self._per_minute)

    def per_minute(self, provider: str) -> float | None:
        """This replica's share of the provider's limit; None: not limited."""
        limit = self._per_minute.get(provider)
        return None if limit is None else limit / self.replicas

    def share(self, replicas: int) -> bool:
        """Split every limit among ``replicas`` running routers; True if that changed.

        The buckets start empty again: a change of replicas is rare, and a share that
        shrinks must not inherit a level measured against a larger one.
        """
        replicas = max(1, replicas)
        if replicas == self.replicas:
            return False
        self.replicas = replicas
        self._limiters = self._split()
        return True

    def _split(self) -> dict[str, AsyncLimiter]:
        return {name: _limiter(limit / self.replicas)
                for name, limit in self._per_minute.items()}

    def has_capacity(self, provider: str) -> bool:
        limiter = self._limiters.get(provider)
        return limiter is None or limiter.has_capacity()

    async def try_acquire(self, provider: str) -> bool:
        """Take one request's worth of capacity now, or return False without waiting."""
        limiter = self._limiters.get(provider)
        if limiter is None:
            return True
        if not limiter.has_capacity():
            return False
        await limiter.acquire()  # there is capacity, so this does not wait
        return True
