"""Issue #19's faults, one at a time, with real processes: small versions of ``bench.chaos``.

Each test starts the actor under fault the way it is deployed (``ragbus actor NAME``, a
supervising parent and a child process), keeps the rest of the query path in this
process, sends a steady trickle of queries, injects the fault, and checks the promises:
every query ends with a terminal event (``done``, ``failed`` with a code, ``cancelled``),
none hangs, and the system serves again after the fault.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import msgspec
import pytest
from anyio.abc import Process

from ragbus.actors.embedder import Embedder
from ragbus.actors.ingestor import Ingestor
from ragbus.actors.router import Router
from ragbus.actors.trimmer import ContextTrimmer
from ragbus.config import (
    IngestorSettings,
    NatsSettings,
    ProviderSettings,
    RouterSettings,
    RuntimeSettings,
    Settings,
)
from ragbus.runtime import ACCEPT_WAIT_S, Client, connect, wait_for_instances
from ragbus.runtime.cli import EmbeddedNats, follow_job, submit_job
from ragbus.runtime.cli._status import breaker_states
from ragbus.runtime.connection import NATS
from ragbus.subjects import (
    BreakerState,
    Cancelled,
    Done,
    ErrorCode,
    Failed,
    IngestRequest,
    InlineDocument,
    JobState,
    Query,
    QueryEvent,
    Subjects,
)
from tests.actors.router._fixtures import ask as generate_events
from tests.actors.router._fixtures import generate, openai, with_router
from tests.support import running
from tests.support.cli import RAGBUS, children
from tests.support.fake_openai import Behaviour, FakeOpenAI

S = Subjects()
TERMINAL = (Done, Failed, Cancelled)


@asynccontextmanager
async def supervised(name: str, env: dict[str, str], cwd: Path) -> AsyncIterator[Process]:
    """``ragbus actor NAME`` as deployed (parent and child); drained on exit."""
    proc = await anyio.open_process([*RAGBUS, "actor", name], cwd=cwd, env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
        proc.send_signal(signal.SIGTERM)
        with anyio.fail_after(60):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def ask(nc: NATS, question: str, *, timeout_s: float) -> QueryEvent:
    """A query as ``ragbus ask`` and the bridge send it; its terminal event."""
    query = Query(question=question, reply_to=nc.new_inbox())
    async with Client(nc).open_stream(S.query, query, timeout=timeout_s,
                                      accept_within=ACCEPT_WAIT_S) as events:
        async for event in events:
            if isinstance(event, TERMINAL):
                return event
    raise AssertionError("the stream ended without a terminal event")


async def test_a_killed_retriever_process_is_restarted_and_no_query_hangs(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    """The issue's measured failure: one retriever killed with -9 under load left every
    later query without a final event and nothing restarted it."""
    settings = Settings(
        nats=NatsSettings(url=nats_url), data_dir=str(tmp_path),
        runtime=RuntimeSettings(default_timeout_s=30),
        ingestor=IngestorSettings(progress_interval_ms=0),
        router=RouterSettings(providers=[ProviderSettings(name="extractive",
                                                          kind="extractive")]),
    )
    env = {**os.environ, "RAGBUS_NATS__URL": nats_url, "RAGBUS_METRICS__ENABLED": "false",
           "RAGBUS_LOGGING__LEVEL": "warning", "RAGBUS_DATA_DIR": str(tmp_path),
           "RAGBUS_RETRIEVER__DATA_DIR": str(tmp_path / "qdrant")}
    timeout_s = 5.0
    outcomes: list[QueryEvent] = []

    async def one() -> None:
        with anyio.fail_after(timeout_s + 10):  # a hang fails the test here
            outcomes.append(await ask(nc, "Why do sea otters hold hands?",
                                      timeout_s=timeout_s))

    async with running(Embedder(settings), Ingestor(settings), ContextTrimmer(settings),
                       Router(settings)), supervised("retriever", env, tmp_path) as proc:
        first = await wait_for_instances(nc, "retriever", 1, timeout_s=120)
        job = IngestRequest(documents=[InlineDocument(
            id="otters", title="Sea otters",
            text="Sea otters hold hands while they sleep so that they do not drift apart.")])
        await submit_job(nc, job)
        assert [p async for p in follow_job(nc, job.job_id, timeout_s=60)][-1].state \
            == JobState.SUCCEEDED
        (child,) = children(proc.pid)
        async with anyio.create_task_group() as load:
            for _ in range(10):  # queries in flight when it dies
                load.start_soon(one)
                await anyio.sleep(0.05)
            os.kill(child, signal.SIGKILL)
            for _ in range(10):  # queries while it is down or restarting
                load.start_soon(one)
                await anyio.sleep(0.05)
            again = await wait_for_instances(nc, "retriever", 1, timeout_s=120)
            after = len(outcomes)
            for _ in range(5):  # queries after the restart
                load.start_soon(one)
                await anyio.sleep(0.05)
    assert again != first
    assert len(outcomes) == 25  # every query ended (a hang would have failed above)
    codes = {e.code for e in outcomes if isinstance(e, Failed)}
    assert codes <= {ErrorCode.UNAVAILABLE, ErrorCode.DEADLINE_EXCEEDED}, outcomes
    assert not [e for e in outcomes if isinstance(e, Cancelled)]
    served_again = [e for e in outcomes[after:] if isinstance(e, Done)]
    assert served_again, outcomes[after:]
    assert all(e.provider == "extractive" for e in served_again)


def router_config(path: Path, *, local: str, cloud: str) -> None:
    """A ``ragbus.toml`` for a router process: a "local" and a "cloud" OpenAI-compatible
    provider, then the extractive last resort; short provider timeouts, the breaker
    opening after two failures; no answer cache (every request must reach a provider)."""
    def provider(name: str, url: str, locality: str) -> str:
        return (f"[[router.providers]]\nname = {json.dumps(name)}\n"
                f"base_url = {json.dumps(url)}\nmodel = \"{name}-model\"\n"
                f"locality = \"{locality}\"\nfirst_token_timeout_s = 1.0\n"
                "idle_timeout_s = 1.0\n")
    path.write_text(
        "[router]\nmode = \"local-first\"\nbreaker_failure_threshold = 2\n"
        "answer_cache = false\n\n" + provider("local", local, "local") + "\n"
        + provider("cloud", cloud, "cloud") + "\n[[router.providers]]\n"
        "name = \"extractive\"\nkind = \"extractive\"\n")


@pytest.mark.parametrize(("fault", "failed_first", "local_calls", "reason"), [
    (Behaviour.rate_limited(retry_after="60"), 0, 1, "rate_limited"),
    (Behaviour.server_error(503), 0, 2, "failures"),
    (Behaviour.stall_before_first_token(), 0, 2, "failures"),
    (Behaviour.disconnect_mid_stream(after=2), 2, 2, "failures"),
], ids=["429", "5xx", "stall-before-first-token", "drop-mid-stream"])
async def test_a_faulty_local_provider_falls_back_to_cloud_and_its_breaker_opens(
    nats_url: str, nc: NATS, tmp_path: Path, fault: Behaviour, failed_first: int,
    local_calls: int, reason: str
) -> None:
    """The router as deployed, "local" faulting and "cloud" healthy. Before the first
    token a fault falls back to cloud; after it (a dropped stream) the request ends with
    ``failed`` UNAVAILABLE and its partial length, as the README says; either way the
    breaker opens and later requests go straight to cloud. None hangs."""
    env = {**os.environ, "RAGBUS_NATS__URL": nats_url, "RAGBUS_METRICS__ENABLED": "false",
           "RAGBUS_LOGGING__LEVEL": "warning", "RAGBUS_DATA_DIR": str(tmp_path)}
    async with FakeOpenAI(fault) as local, FakeOpenAI(Behaviour.counting(5)) as cloud:
        router_config(tmp_path / "ragbus.toml", local=local.base_url, cloud=cloud.base_url)
        async with supervised("router", env, tmp_path):
            await wait_for_instances(nc, "router", 1, timeout_s=60)
            outcomes = []
            for _ in range(4):
                with anyio.fail_after(20):  # a hang fails here
                    outcomes.append((await generate_events(nc, generate(nc), timeout=8))[-1])
            stored = {t.provider: t for t in await breaker_states(nc, S)}
    failed, answered = outcomes[:failed_first], outcomes[failed_first:]
    for event in failed:
        assert isinstance(event, Failed), event
        assert event.code == ErrorCode.UNAVAILABLE
        assert event.partial_text_length == len("t0 t1 ")
    for event in answered:
        assert isinstance(event, Done), event
        assert event.provider == "cloud"
    assert len(local.chat_requests) == local_calls  # open: later requests skip it
    assert stored["local"].state == BreakerState.OPEN
    assert stored["local"].reason == reason
    assert "cloud" not in stored or stored["cloud"].state == BreakerState.CLOSED


async def test_streams_of_a_killed_router_process_end_by_their_deadline_and_it_serves_again(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    """A router killed mid-stream sends nothing more: its requesters' streams end with
    DEADLINE_EXCEEDED at their deadline (the client's own timer, with the text so far),
    the provider's connections close with the process, and the restarted router answers."""
    env = {**os.environ, "RAGBUS_NATS__URL": nats_url, "RAGBUS_METRICS__ENABLED": "false",
           "RAGBUS_LOGGING__LEVEL": "warning", "RAGBUS_DATA_DIR": str(tmp_path)}
    async with FakeOpenAI(Behaviour.counting(3)) as local, \
            FakeOpenAI(Behaviour.counting(3)) as cloud:
        local.behaviour = Behaviour.counting(40, pace_s=0.05)  # 2 s, well within 5 s
        router_config(tmp_path / "ragbus.toml", local=local.base_url, cloud=cloud.base_url)
        async with supervised("router", env, tmp_path) as proc:
            first = await wait_for_instances(nc, "router", 1, timeout_s=60)
            (child,) = children(proc.pid)
            outcomes: list[QueryEvent] = []

            async def one() -> None:
                with anyio.fail_after(20):  # a hang fails here
                    outcomes.append((await generate_events(nc, generate(nc), timeout=5))[-1])

            async with anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(one)
                await local.wait_until(lambda: local.counters.streams == 4, timeout=20)
                os.kill(child, signal.SIGKILL)
            await local.wait_for_disconnects(4, timeout=10)
            again = await wait_for_instances(nc, "router", 1, timeout_s=60)
            local.behaviour = Behaviour.counting(3)
            with anyio.fail_after(20):
                served = (await generate_events(nc, generate(nc), timeout=8))[-1]
    assert again != first
    assert len(outcomes) == 4
    for event in outcomes:  # a live router would have finished them with done
        assert isinstance(event, Failed), event
        assert event.code == ErrorCode.DEADLINE_EXCEEDED
    assert isinstance(served, Done), served
    assert served.provider == "local"


def _stuck_subscriber(url: str) -> socket.socket:
    """A NATS client that subscribes to everything and then never reads: a real socket
    with a small receive buffer, so the server's writes to it back up at once."""
    host, port = url.removeprefix("nats://").rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.settimeout(5)
    sock.recv(4096)  # INFO
    sock.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB > 1\r\nPING\r\n')
    assert b"PONG" in sock.recv(4096)  # subscribed; from here on nothing is read
    return sock


def _slow_consumers(monitor_url: str) -> int:
    with urllib.request.urlopen(f"{monitor_url}/varz", timeout=5) as r:
        return int(json.load(r)["slow_consumers"])


async def test_a_subscriber_that_never_reads_is_cut_off_by_nats_and_no_actor_stalls(
    settings: Settings, tmp_path: Path
) -> None:
    """Issue #19's "one NATS subscriber that is a slow consumer": it takes every message on
    the bus and reads none. Publishing never waits for it (the server buffers per client
    and cuts it off once a write has waited ``write_deadline``), so the router keeps
    streaming every answer in full to the requesters that do read."""
    include = tmp_path / "slow.conf"
    include.write_text('write_deadline: "1s"\n')
    tokens = tuple(f"w{i:04d} " + "lorem ipsum dolor sit amet " * 3 for i in range(500))
    async with EmbeddedNats(include=include, monitor=True) as server, \
            FakeOpenAI(Behaviour(tokens=tokens)) as fake:
        s = with_router(msgspec.structs.replace(
            settings, nats=msgspec.structs.replace(settings.nats, url=server.url)),
            [openai("llm", fake.base_url)], answer_cache=False)
        nc = await connect(s.nats, name="requester")
        stuck = _stuck_subscriber(server.url)
        try:
            async with running(Router(s)):
                answers: list[QueryEvent] = []
                with anyio.fail_after(120):
                    while not await anyio.to_thread.run_sync(_slow_consumers,
                                                             server.monitor_url):
                        answers.append((await generate_events(nc, generate(nc),
                                                              timeout=30))[-1])
                    for _ in range(3):  # and after it was cut off
                        answers.append((await generate_events(nc, generate(nc),
                                                              timeout=30))[-1])
        finally:
            stuck.close()
            await nc.close()
    assert len(answers) > 3
    for event in answers:
        assert isinstance(event, Done), event
        assert event.text_length == len("".join(tokens))
