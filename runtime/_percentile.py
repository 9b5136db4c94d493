"""Percentiles without numpy: the CLI's readouts and the benchmarks use the same one."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ("percentile",)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks
    (numpy's default): of 1..100, p50 is 50.5 and p99 is 99.01."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
