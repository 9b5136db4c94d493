"""AdaptiveLimit: queries in flight at a first hop, steered by their own latency."""

from __future__ import annotations

import pytest

from ragbus.runtime import AdaptiveLimit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def fill(limit: AdaptiveLimit) -> int:
    taken = 0
    while limit.try_acquire():
        taken += 1
    return taken


def test_beyond_the_limit_a_query_is_refused_until_a_place_is_given_back() -> None:
    limit = AdaptiveLimit(0.25, minimum=2, maximum=8, initial=3)
    assert fill(limit) == 3
    assert not limit.try_acquire()
    limit.release(0.01)
    assert limit.try_acquire()


def test_slow_queries_cut_the_limit_once_per_target_window_and_never_below_the_floor() -> None:
    clock = Clock()
    limit = AdaptiveLimit(0.25, minimum=4, maximum=64, initial=32, backoff=0.5, clock=clock)
    fill(limit)
    for _ in range(10):  # one slow burst: one signal
        limit.release(1.0)
    assert limit.limit == 16
    clock.now += 0.3
    limit.release(1.0)
    assert limit.limit == 8
    for _ in range(5):
        clock.now += 0.3
        limit.release(1.0)
    assert limit.limit == 4  # the floor: always admitted, whatever the latency


def test_fast_queries_grow_the_limit_only_while_it_binds() -> None:
    limit = AdaptiveLimit(0.25, minimum=2, maximum=5, initial=2)
    for _ in range(3):  # one query at a time: the limit never binds, so it stays
        assert limit.try_acquire()
        limit.release(0.01)
    assert limit.limit == 2
    for _ in range(200):  # always full: each completion adds 1/limit, up to the maximum
        fill(limit)
        limit.release(0.01)
    assert limit.limit == 5
    assert fill(limit) == 1  # four still in flight, and room for exactly one more


def test_retry_after_follows_recent_latency_and_is_never_below_a_tenth_of_a_second() -> None:
    limit = AdaptiveLimit(0.25)
    assert limit.retry_after_s() == 0.1
    limit.try_acquire()
    limit.release(2.0)
    assert limit.retry_after_s() == 2.0


def test_a_refused_place_is_forgotten_without_teaching_the_limit() -> None:
    limit = AdaptiveLimit(0.25, minimum=1, maximum=4, initial=1)
    assert limit.try_acquire()
    limit.forget()
    assert limit.inflight == 0
    assert limit.limit == 1
    assert limit.retry_after_s() == 0.1


@pytest.mark.parametrize("kwargs", [
    {"target_s": 0}, {"target_s": 1, "minimum": 0}, {"target_s": 1, "minimum": 9, "maximum": 8},
    {"target_s": 1, "backoff": 1.0},
])
def test_nonsense_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"must be|need"):
        AdaptiveLimit(**kwargs)  # type: ignore[arg-type]
