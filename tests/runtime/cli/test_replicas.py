"""``ragbus actor NAME [--replicas N]``: child processes of one actor, restarted, drained as one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import anyio

from ragbus.runtime import Client, configure_logging, discover, wait_for_instances
from ragbus.runtime.cli import main, spare_state
from ragbus.runtime.cli._replicas import _Replicas
from ragbus.runtime.cli._spare import spare_argv
from ragbus.runtime.connection import NATS
from ragbus.subjects import Embed, Embedded, Subjects
from tests.support.cli import RAGBUS, children, spares
from tests.support.ports import free_port


async def test_replicas_run_restart_when_killed_and_drain_on_one_signal(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    env = {**os.environ, "RAGBUS_NATS__URL": nats_url, "RAGBUS_METRICS__ENABLED": "false"}
    proc = await anyio.open_process(
        [*RAGBUS, "actor", "router", "--replicas", "2"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        first = await wait_for_instances(nc, "router", 2)
        replicas = children(proc.pid)
        assert len(replicas) == 2

        victim = min(replicas)
        os.kill(victim, signal.SIGKILL)
        with anyio.fail_after(30):  # the dead replica's service entry goes with its connection
            while (await wait_for_instances(nc, "router", 2)) == first:  # noqa: ASYNC110 - polling another process
                await anyio.sleep(0.2)
        assert victim not in children(proc.pid)
        assert len(children(proc.pid)) == 2

        proc.send_signal(signal.SIGINT)  # as Ctrl-C: one signal drains them all
        with anyio.fail_after(60):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert not [s for s in await discover(nc, "PING", wait_s=0.3) if s.get("name") == "router"]


def test_replicas_below_one_are_refused() -> None:
    assert main(["actor", "router", "--replicas", "0"]) == 2


async def test_a_drain_does_not_wait_out_a_dying_replicas_backoff() -> None:
    replicas = _Replicas([[sys.executable, "-c", "raise SystemExit(3)"]], [dict(os.environ)],
                         backoff=(60.0, 60.0, 30.0))
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(replicas.keep, 0)
            while 0 not in replicas.processes or replicas.processes[0].returncode is None:  # noqa: ASYNC110 - polling another process
                await anyio.sleep(0.05)
            await anyio.sleep(0.2)  # now in its 60 s backoff
            began = anyio.current_time()
            replicas.drain()
    assert anyio.current_time() - began < 5
    assert replicas.processes[0].returncode == 3


def _log(path: Path) -> list[dict[str, Any]]:
    """The JSON log lines parent and child wrote to one stderr file."""
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.startswith("{")]


def _restarts_metric(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text: str = r.read().decode()
    return next((line for line in text.splitlines()
                 if line.startswith('ragbus_actor_restarts_total{actor="router"}')), "")


async def test_one_actor_runs_in_a_child_that_is_restarted_after_kill_9_and_drained_once(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    port = free_port()
    env = {**os.environ, "RAGBUS_NATS__URL": nats_url, "RAGBUS_METRICS__PORT": str(port)}
    stderr = tmp_path / "stderr.jsonl"
    with stderr.open("w") as sink:
        proc = await anyio.open_process(
            [*RAGBUS, "--log-format", "json", "actor", "router"],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=sink)
    try:
        first = await wait_for_instances(nc, "router", 1)
        (child,) = children(proc.pid)  # the actor is not in the command's own process
        (spare,) = spares(proc.pid)  # runtime.warm_spare: one waits, imports done
        assert (await anyio.to_thread.run_sync(_restarts_metric, port)) == ""

        os.kill(child, signal.SIGKILL)
        with anyio.fail_after(60):
            while (again := await wait_for_instances(nc, "router", 1)) == first:  # noqa: ASYNC110 - polling another process
                await anyio.sleep(0.1)
        assert again != first
        (restarted,) = children(proc.pid)
        assert restarted == spare  # the spare became the replica
        died = [e for e in _log(stderr) if e["event"] == "replica.died"]
        assert [(e["pid"], e["signal"]) for e in died] == [(child, "SIGKILL")]
        started = [e for e in _log(stderr) if e["event"] == "replica.started"]
        assert [(e["pid"], e["spare"]) for e in started] == [(child, False), (spare, True)]
        metric = await anyio.to_thread.run_sync(_restarts_metric, port)
        assert metric.endswith(" 1.0"), metric  # the parent told the new child
        with anyio.fail_after(60):  # and keeps a new spare, a few seconds later
            while not (spares(proc.pid) - {spare}):  # noqa: ASYNC110 - polling another process
                await anyio.sleep(0.1)
        (second_spare,) = spares(proc.pid)

        proc.send_signal(signal.SIGTERM)  # as systemd or compose stops it
        with anyio.fail_after(60):
            assert await proc.wait() == 0  # the parent exits when the child has drained
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    events = [e["event"] for e in _log(stderr)]
    # one drain in the parent, one in the child it passed the signal to; nothing forced
    assert events.count("shutdown.draining") == 2
    assert "shutdown.forced" not in events
    assert events.count("actor.stopped") == 1
    assert not _alive(restarted)
    assert not _alive(second_spare)
    assert not [s for s in await discover(nc, "PING", wait_s=0.3) if s.get("name") == "router"]


async def test_an_embedders_spare_prewarms_its_models_and_its_successor_serves_with_them(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    env = {**os.environ, "RAGBUS_NATS__URL": nats_url, "RAGBUS_METRICS__ENABLED": "false",
           "RAGBUS_EMBEDDER__CACHE": "false"}
    stderr = tmp_path / "stderr.jsonl"
    with stderr.open("w") as sink:
        proc = await anyio.open_process(
            [*RAGBUS, "--log-format", "json", "actor", "embedder"],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=sink)
    try:
        first = await wait_for_instances(nc, "embedder", 1)
        (child,) = children(proc.pid)
        with anyio.fail_after(120):  # ready: imports done and models loaded
            while not (ready := spares(proc.pid, ready=True)):  # noqa: ASYNC110 - polling another process
                await anyio.sleep(0.1)
        (spare,) = ready

        os.kill(child, signal.SIGKILL)
        with anyio.fail_after(60):
            while (await wait_for_instances(nc, "embedder", 1)) == first:  # noqa: ASYNC110 - polling another process
                await anyio.sleep(0.1)
        assert children(proc.pid) == {spare}
        reply = await Client(nc).request(
            Subjects().embed, Embed(texts=["a text", "a question?"]), Embedded, timeout=60)
        assert (len(reply.vectors), reply.dim) == (2 * 384 * 4, 384)

        proc.send_signal(signal.SIGTERM)
        with anyio.fail_after(60):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    events = _log(stderr)
    assert "spare.prewarm_failed" not in [e["event"] for e in events]
    # the first replica loaded its models itself; the spare's successor found them loaded
    assert [e["preloaded"] for e in events if e["event"] == "embedder.model"] == [
        [], ["bulk", "query"]]


async def test_a_spare_whose_prewarm_fails_logs_it_and_waits_ready(tmp_path: Path) -> None:
    env = {**os.environ, "RAGBUS_LOGGING__FORMAT": "json",
           "RAGBUS_EMBEDDER__MODEL": str(tmp_path / "no-such-model")}
    stderr = tmp_path / "stderr.jsonl"
    with stderr.open("w") as sink:
        spare = await anyio.open_process(
            spare_argv(["embedder"], ["actor", "embedder", "--no-supervise"]), cwd=tmp_path,
            env=env, stdin=subprocess.PIPE, stdout=sink, stderr=sink)
    try:
        with anyio.fail_after(120):
            while spare_state(spare.pid) != "ready":
                assert spare.returncode is None, stderr.read_text()
                await anyio.sleep(0.1)
        assert spare.stdin is not None
        await spare.stdin.aclose()  # the parent gone: it exits
        with anyio.fail_after(30):
            assert await spare.wait() == 0
    finally:
        if spare.returncode is None:
            spare.kill()
            await spare.wait()
    (failed,) = [e for e in _log(stderr) if e["event"] == "spare.prewarm_failed"]
    assert failed["actor"] == "embedder"
    assert "no-such-model" in failed["error"]


async def test_a_child_that_keeps_dying_at_start_backs_off_and_each_death_is_logged(
    tmp_path: Path,
) -> None:
    log = tmp_path / "log"
    with log.open("w") as stream:
        configure_logging(stream=stream)
        replicas = _Replicas([[sys.executable, "-c", "raise SystemExit(3)"]], [dict(os.environ)],
                             backoff=(0.05, 0.4, 30.0))
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(replicas.keep, 0)
                while replicas.restarts.get(0, 0) < 6:  # noqa: ASYNC110 - polling processes
                    await anyio.sleep(0.05)
                replicas.drain()
    died = [e for e in _log(log) if e["event"] == "replica.died"]
    assert len(died) >= 6
    assert {e["code"] for e in died} == {3}
    assert [e["restart_in_s"] for e in died[:6]] == [0.05, 0.1, 0.2, 0.4, 0.4, 0.4]


async def test_a_child_whose_parent_is_killed_drains_itself(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    env = {**os.environ, "RAGBUS_NATS__URL": nats_url, "RAGBUS_METRICS__ENABLED": "false"}
    proc = await anyio.open_process([*RAGBUS, "actor", "router"], cwd=tmp_path, env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await wait_for_instances(nc, "router", 1)
        (child,) = children(proc.pid)
        (spare,) = spares(proc.pid)
        proc.kill()  # -9: the parent cannot pass anything on
        await proc.wait()
        with anyio.fail_after(30):
            while _alive(child) or _alive(spare):  # noqa: ASYNC110 - polling other processes
                await anyio.sleep(0.1)
            await wait_for_instances(nc, "router", 0)
    finally:
        for pid in (child, spare):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Running (an exited orphan stays a zombie until its new parent reaps it)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "zombie" not in status.split("State:", 1)[1].split("\n", 1)[0]


def test_no_supervise_cannot_run_replicas() -> None:
    assert main(["actor", "router", "--replicas", "2", "--no-supervise"]) == 2
