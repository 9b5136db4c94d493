"""``ragbus stats``: a synthetic audit stream with known figures, read by the real command.

The events go into the real audit stream on a real nats-server through the real
audit publisher, each under the bus role its actor publishes as; ``ragbus stats``
runs as a process of its own. The expected numbers are worked out by hand below.
The last test runs the real router and audit-logger instead, so what they record
is what is read.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec

from ragbus.actors.audit import AuditLogger
from ragbus.actors.router import Router
from ragbus.config import AuditSettings, Settings
from ragbus.runtime import codec, decode_reply
from ragbus.runtime.audit import AuditPublisher
from ragbus.runtime.connection import NATS
from ragbus.subjects import AuditEvent, Done, Feedback, FeedbackRecorded, Subjects
from tests.actors.router._fixtures import ask, generate, openai, with_router
from tests.support import running
from tests.support.cli import RAGBUS
from tests.support.fake_openai import Behaviour, FakeOpenAI

A, B = "grounded:1", "grounded:2"


def answer(i: int, **details: Any) -> AuditEvent:
    """Answer ``i`` of 100: first token ``i`` ms, total ``10 i`` ms, ``i`` tokens; 1..60
    with prompt A, 61..100 with B; every fourth from "cloud"; 1..5 exact and 6..8 semantic
    answer-cache hits; every fifth a retrieval-cache hit (so not embedded), other even ones
    an embedding-cache hit; 23, 46, 69 and 92 after a fallback; 99 cut as a loop."""
    cached = "exact" if i <= 5 else "semantic" if i <= 8 else None
    d: dict[str, Any] = {
        "provider": "cloud" if i % 4 == 0 else "local",
        "prompt_version": A if i <= 60 else B,
        "fallbacks": 1 if i % 23 == 0 else 0,
        "timings_ms": {"first_token": float(i), "total": float(10 * i)},
        "cache": {"retrieval": i % 5 == 0,
                  "embedding": None if i % 5 == 0 else i % 2 == 0,
                  "answer": cached or "miss"},
    }
    if cached:
        d["cache_hit"] = cached
    if i == 99:
        d["stopped"] = "repetition"
    d.update(details)
    return AuditEvent(kind="answer.done", actor="router", request_id=f"r{i:03d}",
                      sizes={"completion_tokens": i}, details=d)


def rating(request_id: str, value: str, version: str | None, known: bool = True
           ) -> AuditEvent:
    details: dict[str, Any] = {"rating": value, "known": known}
    if version is not None:
        details["prompt_version"] = version
    return AuditEvent(kind="answer.feedback", actor="audit-logger", request_id=request_id,
                      details=details)


def synthetic() -> list[AuditEvent]:
    router: list[AuditEvent] = [answer(i) for i in range(1, 101)]
    router.append(answer(200, llm_only=True))  # the conversation brief: not an answer
    three_days_ago = int((time.time() - 3 * 86400) * 1000)
    router.append(AuditEvent(kind="answer.done", actor="router", request_id="old",
                             time=three_days_ago, details={"provider": "old"}))
    router += [AuditEvent(kind="answer.failed", actor="router", code=code)
               for code in ("UNAVAILABLE", "UNAVAILABLE", "DEADLINE_EXCEEDED")]
    router += [AuditEvent(kind="request.cancelled", actor="router", request_id=r)
               for r in ("c1", "c2")]
    router += [AuditEvent(kind="provider.breaker", actor="router", subject=p,
                          details={"state": state})
               for p, state in (("cloud", "open"), ("cloud", "closed"), ("cloud", "open"),
                                ("local", "open"), ("local", "half_open"))]
    asked = ["How do I make a venv?"] * 50 + ["What is a raft?"] * 30 + [None] * 23
    retriever = [AuditEvent(kind="query.received", actor="retriever", question=q,
                            text_mode=None if q is None else "full") for q in asked]
    retriever.append(AuditEvent(kind="query.received", actor="retriever",
                                question="sha256:ab12", text_mode="hashed"))
    retriever.append(AuditEvent(kind="request.cancelled", actor="retriever", request_id="c1"))
    bridge = [AuditEvent(kind="rate.limited", actor="bridge") for _ in range(4)]
    # A: 1..30 up, 31..40 down, 50 up then down (the latest counts); B: 61..65 up, 66..80
    # down, without the version (joined from the answers); one for an unknown answer
    feedback = [rating(f"r{i:03d}", "up" if i <= 30 else "down", A) for i in range(1, 41)]
    feedback += [rating("r050", "up", A), rating("r050", "down", A)]
    feedback += [rating(f"r{i:03d}", "up" if i <= 65 else "down", None)
                 for i in range(61, 81)]
    feedback.append(rating("nobody", "up", None, known=False))
    return [*router, *retriever, *bridge, *feedback]


async def publish(settings: Settings, nc: NATS, events: list[AuditEvent]) -> None:
    publishers = {actor: AuditPublisher(settings, actor=actor)
                  for actor in ("router", "retriever", "bridge", "audit-logger")}
    async with anyio.create_task_group() as tg:
        for p in publishers.values():
            await tg.start(p.run, nc)
        for event in events:
            assert await publishers[event.actor].put(event)
        for p in publishers.values():
            assert await p.flush(10)
        tg.cancel_scope.cancel()


def stats(nats_url: str, cwd: Path, *args: str) -> str:
    env = {**os.environ, "RAGBUS_NATS__URL": nats_url, "COLUMNS": "220"}
    done = subprocess.run([*RAGBUS, "stats", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60, check=True)
    return done.stdout


def quantiles(count: int, p50: float, p95: float, p99: float) -> dict[str, Any]:
    return {"count": count, "p50": p50, "p95": p95, "p99": p99}


async def test_stats_read_the_audit_stream_with_exact_figures_and_an_ab_readout(
    settings: Settings, nc: NATS, nats_url: str, tmp_path: Path
) -> None:
    await publish(settings, nc, synthetic())
    found = json.loads(await anyio.to_thread.run_sync(stats, nats_url, tmp_path, "--json"))
    table = await anyio.to_thread.run_sync(stats, nats_url, tmp_path, "--since", "1h")

    assert found["questions"] == 104
    assert found["answers"] == 100  # neither the brief nor the three-day-old one
    assert found["failed"] == {"DEADLINE_EXCEEDED": 1, "UNAVAILABLE": 2}
    assert found["cancelled"] == 2  # c1 counted once, though two actors recorded it
    # 1..100 ms: linear interpolation between closest ranks
    assert found["ttft_ms"] == quantiles(100, 50.5, 95.05, 99.01)
    assert found["total_ms"] == quantiles(100, 505.0, 950.5, 990.1)
    assert found["cache"] == {
        "retrieval": {"hits": 20, "lookups": 100, "rate": 0.2},
        "answer": {"exact": 5, "semantic": 3, "lookups": 100, "rate": 0.08},
        "embedding": {"hits": 40, "lookups": 80, "rate": 0.5},
    }
    assert found["providers"] == {"local": {"answers": 75, "share": 0.75},
                                  "cloud": {"answers": 25, "share": 0.25}}
    assert found["fallback_rate"] == 0.0435  # 4 of the 92 answers not from the cache
    assert found["breaker_openings"] == {"total": 3, "providers": {"cloud": 2, "local": 1}}
    assert found["rate_limited"] == 4
    assert found["looped"] == 1
    assert found["feedback"] == {"up": 36, "down": 26, "rated": 62, "rated_share": 0.62,
                                 "up_share": 0.5806, "unknown": 1}
    versions = found["prompt_versions"]
    assert list(versions) == [A, B]
    assert versions[A] == {
        "answers": 60, "share": 0.6,
        "ttft_ms": quantiles(60, 30.5, 57.05, 59.41),
        "total_ms": quantiles(60, 305.0, 570.5, 594.1),
        "completion_tokens": {"total": 1830, "mean": 30.5},
        "feedback": {"up": 30, "down": 11, "rated": 41, "rated_share": 0.6833,
                     "up_share": 0.7317},
    }
    assert versions[B] == {
        "answers": 40, "share": 0.4,
        "ttft_ms": quantiles(40, 80.5, 98.05, 99.61),
        "total_ms": quantiles(40, 805.0, 980.5, 996.1),
        "completion_tokens": {"total": 3220, "mean": 80.5},
        "feedback": {"up": 5, "down": 15, "rated": 20, "rated_share": 0.5, "up_share": 0.25},
    }
    assert found["top_questions"] == [
        {"question": "How do I make a venv?", "text_mode": "full", "count": 50},
        {"question": "What is a raft?", "text_mode": "full", "count": 30},
        {"question": "sha256:ab12", "text_mode": "hashed", "count": 1}]
    # the tables say the same
    row = next(line for line in table.splitlines() if line.strip("│ ").startswith(B))
    cells = [c.strip() for c in row.split("│") if c.strip()]
    assert cells[:7] == [B, "40", "40.0%", "50.0%", "5", "15", "25.0%"]
    assert "first token" in table
    assert "UNAVAILABLE 2" in table
    assert "How do I make a venv?" in table


async def test_an_empty_window_says_so_without_failing(
    nats_url: str, nc: NATS, settings: Settings, tmp_path: Path
) -> None:
    await publish(settings, nc, [AuditEvent(kind="query.received", actor="retriever")])
    found = json.loads(await anyio.to_thread.run_sync(
        stats, nats_url, tmp_path, "--json", "--since", str(int(time.time() * 1000) + 60_000)))
    assert (found["questions"], found["answers"]) == (0, 0)
    assert found["ttft_ms"] == {"count": 0, "p50": None, "p95": None, "p99": None}
    assert found["fallback_rate"] is None


def test_a_since_that_is_no_time_is_refused(tmp_path: Path) -> None:
    env = {**os.environ, "RAGBUS_NATS__URL": "nats://127.0.0.1:1"}
    done = subprocess.run([*RAGBUS, "stats", "--since", "yesterday"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "cannot read 'yesterday' as a time" in done.stderr



async def test_answers_of_the_real_router_and_their_feedback_show_in_stats(
    settings: Settings, nc: NATS, nats_url: str, tmp_path: Path
) -> None:
    async with FakeOpenAI(Behaviour.counting(4)) as fake:
        s = msgspec.structs.replace(
            with_router(settings, [openai("small", fake.base_url)]),
            audit=AuditSettings(store_dir=str(tmp_path / "audit")))
        async with running(AuditLogger(s), Router(s)):
            scope = "tests"
            first = (await ask(nc, generate(nc, cache_scope=scope,
                                            timings_ms={"retrieval": 5.0, "total": 6.0})))[-1]
            again = (await ask(nc, generate(nc, cache_scope=scope,
                                            timings_ms={"retrieval": 4.0, "total": 5.0,
                                                        "retrieval_cache_hit": 1.0})))[-1]
            assert isinstance(first, Done)
            assert isinstance(again, Done)
            assert again.cache_hit
            reply = await nc.request(Subjects().feedback, codec.encode(
                Feedback(request_id=first.request_id, rating="up")), timeout=8)
            assert decode_reply(reply, FeedbackRecorded).known
    found = json.loads(await anyio.to_thread.run_sync(stats, nats_url, tmp_path, "--json"))
    assert found["answers"] == 2
    assert found["providers"] == {"small": {"answers": 2, "share": 1.0}}
    assert found["cache"]["answer"] == {"exact": 1, "semantic": 0, "lookups": 2, "rate": 0.5}
    assert found["cache"]["retrieval"] == {"hits": 1, "lookups": 2, "rate": 0.5}
    assert found["cache"]["embedding"]["lookups"] == 0  # no embed timing: not embedded
    assert found["fallback_rate"] == 0.0  # one fresh answer, from the first provider
    assert found["ttft_ms"]["count"] == found["total_ms"]["count"] == 2
    assert found["feedback"]["up"] == 1
    assert found["prompt_versions"]["grounded:1"]["feedback"]["up"] == 1
    assert found["prompt_versions"]["grounded:1"]["completion_tokens"]["total"] == 4
