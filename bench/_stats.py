"""Percentiles without numpy, for benchmarks that must stay dependency-light (the
runtime's, so a benchmark and ``ragbus stats`` compute them alike), and the one way
a benchmark prints its result."""

from __future__ import annotations

import json
import math
from typing import Any

from ragbus.runtime import percentile

__all__ = ("dumps", "percentile")


def dumps(result: Any) -> str:
    """``result`` as strict JSON: a figure no run reached (a NaN or an infinity, say
    the p99 of a rate nothing was served at) becomes ``null``, because ``NaN`` is not
    JSON and a reader's parser may refuse the whole line."""
    return json.dumps(_finite(result), allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
