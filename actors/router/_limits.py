"""Per-provider request rate limits (e.g. Groq's free tier: 30 a minute).

A request that finds no capacity goes to the next provider instead of waiting:
waiting would spend the caller's deadline, and the next provider is usually
faster than a minute. The limit is per replica; with R replicas set it to the
provider's limit divided by R.
"""

from __future__ import annotations

from aiolimiter import AsyncLimiter

__all__ = ("RateLimits",)


class RateLimits:
    """One leaky bucket per limited provider; unlimited providers always pass."""

    def __init__(self, per_minute: dict[str, int | None]) -> None:
        self._limiters = {name: AsyncLimiter(limit, 60.0)
                          for name, limit in per_minute.items() if limit}

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
