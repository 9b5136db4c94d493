"""What every benchmark prints is strict JSON, even for figures no run reached."""

from __future__ import annotations

import json
import math

from bench._stats import dumps


def test_non_finite_figures_print_as_null_and_the_line_is_strict_json() -> None:
    line = dumps({"qps": 0, "loaded_ms_p99": math.nan,
                  "phases": [{"p99": math.inf}, {"p99": 1.5}], "pair": (2.0, -math.inf)})

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    assert json.loads(line, parse_constant=refuse) == {
        "qps": 0, "loaded_ms_p99": None, "phases": [{"p99": None}, {"p99": 1.5}],
        "pair": [2.0, None]}
