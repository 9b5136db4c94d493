"""The supervisor keeps actors running and stops them together."""

from __future__ import annotations

import io

import anyio

from ragbus.config import Settings
from ragbus.runtime import Client, Supervisor, configure_logging
from ragbus.runtime.connection import NATS
from ragbus.subjects import Subjects
from tests.support import Echo, Ping, Pong
from tests.support.echo import echo_subject


class FlakyEcho(Echo):
    """Fails its set-up a given number of times, like an actor whose store is not ready."""

    failures_left = 0

    async def setup(self) -> None:
        if FlakyEcho.failures_left > 0:
            FlakyEcho.failures_left -= 1
            raise ConnectionError("store not ready yet")


async def test_supervisor_restarts_a_crashing_actor_with_backoff(
    settings: Settings, nc: NATS
) -> None:
    log = io.StringIO()
    configure_logging(stream=log)
    FlakyEcho.failures_left = 2
    supervisor = Supervisor({"echo": lambda: FlakyEcho(settings)}, backoff_initial_s=0.01,
                            backoff_max_s=0.05)
    async with anyio.create_task_group() as tg:
        await tg.start(supervisor.run)
        pong = await Client(nc).request(echo_subject(Subjects()), Ping(text="back"), Pong)
        supervisor.stop()
    assert pong.text == "back"
    assert supervisor.restarts("echo") == 2
    logged = log.getvalue()
    assert logged.count('"actor.crashed"') == 2
    assert "ConnectionError: store not ready yet" in logged


async def test_supervisor_stop_drains_all_actors(settings: Settings, nc: NATS) -> None:
    supervisor = Supervisor({"a": lambda: Echo(settings), "b": lambda: Echo(settings)})
    client = Client(nc)
    results: list[Pong] = []
    async with anyio.create_task_group() as tg:
        await tg.start(supervisor.run)

        async def ask() -> None:
            results.append(await client.request(echo_subject(Subjects()),
                                                Ping(text="x", sleep_s=0.2), Pong))

        tg.start_soon(ask)
        await anyio.sleep(0.05)
        supervisor.stop()
    assert len(results) == 1  # in-flight work finished during the drain
    assert supervisor.restarts("a") == supervisor.restarts("b") == 0
