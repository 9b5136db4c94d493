"""Restart delays: doubling to a cap, reset by a healthy run."""

from __future__ import annotations

import pytest

from ragbus.runtime._backoff import Backoff


def test_delays_double_up_to_the_cap_while_runs_stay_short() -> None:
    backoff = Backoff(initial_s=0.5, max_s=3.0, healthy_after_s=30.0)
    assert [backoff.after(1.0) for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_a_healthy_run_restarts_at_once_then_the_delays_start_over() -> None:
    backoff = Backoff(initial_s=0.5, max_s=30.0, healthy_after_s=10.0)
    for _ in range(4):
        backoff.after(0.1)
    assert backoff.after(10.0) == 0.0
    assert [backoff.after(0.1) for _ in range(3)] == [0.5, 1.0, 2.0]


def test_a_first_death_at_start_still_waits() -> None:
    assert Backoff(initial_s=0.5, healthy_after_s=10.0).after(0.2) == 0.5


@pytest.mark.parametrize(("initial", "cap"), [(-1.0, 1.0), (2.0, 1.0)])
def test_impossible_bounds_are_refused(initial: float, cap: float) -> None:
    with pytest.raises(ValueError, match="initial_s <= max_s"):
        Backoff(initial_s=initial, max_s=cap)
