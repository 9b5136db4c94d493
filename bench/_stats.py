"""Percentiles without numpy, for benchmarks that must stay dependency-light (the
runtime's, so a benchmark and ``ragbus stats`` compute them alike)."""

from __future__ import annotations

from ragbus.runtime import percentile

__all__ = ("percentile",)
