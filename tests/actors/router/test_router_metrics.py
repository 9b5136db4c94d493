"""What the router counts for the dashboard: provider mix, fallbacks, answer cache, latency.

Real providers on loopback, a real nats-server; the figures are read from the router's
own Prometheus registry, as ``/metrics`` serves it.
"""

from __future__ import annotations

import numpy as np

from ragbus.actors.router import Router
from ragbus.config import Settings
from ragbus.runtime import Metrics
from ragbus.runtime.connection import NATS
from ragbus.subjects import Done
from tests.actors.router._fixtures import ask, extractive, generate, openai, with_router
from tests.support import running
from tests.support.fake_openai import Behaviour, FakeOpenAI


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, {"actor": "router", **labels})
    return 0.0 if value is None else value


async def test_fallbacks_provider_mix_and_end_to_end_latency_are_counted(
    settings: Settings, nc: NATS
) -> None:
    metrics = Metrics()
    # the stage timings the retriever and the trimmer hand on: 0.3 s before the router
    upstream = {"retrieval": 200.0, "trim": 100.0}
    async with FakeOpenAI(Behaviour.server_error()) as broken, \
            FakeOpenAI(Behaviour.counting(3)) as working:
        s = with_router(settings, [openai("broken", broken.base_url),
                                   openai("working", working.base_url), extractive()],
                        breaker_failure_threshold=1, answer_cache=False)
        async with running(Router(s, metrics=metrics)):
            first = await ask(nc, generate(nc, timings_ms=upstream))   # 500, then working
            second = await ask(nc, generate(nc, timings_ms=upstream))  # breaker open: skipped
    assert [e[-1].provider for e in (first, second) if isinstance(e[-1], Done)] == \
        ["working", "working"]
    assert sample(metrics, "ragbus_router_fallbacks_total", provider="broken",
                  reason="server_error") == 1
    assert sample(metrics, "ragbus_router_fallbacks_total", provider="broken",
                  reason="breaker") == 1
    assert sample(metrics, "ragbus_router_answers_total", provider="working",
                  answer_cache="miss") == 2
    assert sample(metrics, "ragbus_router_answers_total", provider="broken",
                  answer_cache="miss") == 0
    for name in ("ragbus_query_first_token_seconds", "ragbus_query_seconds"):
        assert sample(metrics, f"{name}_count", answer_cache="miss") == 2
        # the upstream stages count: no observation is below their 0.3 s
        assert sample(metrics, f"{name}_bucket", answer_cache="miss", le="0.25") == 0
    ttft = sample(metrics, "ragbus_query_first_token_seconds_sum", answer_cache="miss")
    total = sample(metrics, "ragbus_query_seconds_sum", answer_cache="miss")
    assert 0.6 <= ttft <= total


async def test_answer_cache_lookups_are_counted_by_result(settings: Settings, nc: NATS) -> None:
    metrics = Metrics()
    vector = np.ones(384, dtype="<f4") / np.sqrt(384)
    async with FakeOpenAI(Behaviour.counting(3)) as fake:
        s = with_router(settings, [openai("llm", fake.base_url)])
        async with running(Router(s, metrics=metrics)):
            for _ in range(3):
                await ask(nc, generate(nc, cache_scope="scope", question_vector=vector.tobytes()))
            # not cacheable (shaped by a conversation): no lookup at all
            await ask(nc, generate(nc, cache_scope="scope", brief="we talked about travel"))
    assert sample(metrics, "ragbus_answer_cache_total", result="miss") == 1
    assert sample(metrics, "ragbus_answer_cache_total", result="exact") == 2
    assert sample(metrics, "ragbus_router_answers_total", provider="llm",
                  answer_cache="hit") == 2
    assert sample(metrics, "ragbus_router_answers_total", provider="llm",
                  answer_cache="miss") == 2
    assert sample(metrics, "ragbus_query_seconds_count", answer_cache="hit") == 2
