"""``ragbus actor NAME --replicas N``: N processes of one actor, restarted, drained as one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio

from ragbus.runtime import discover, wait_for_instances
from ragbus.runtime.cli import main
from ragbus.runtime.cli._replicas import _Replicas
from ragbus.runtime.connection import NATS
from tests.support.cli import RAGBUS


def _children(pid: int) -> set[int]:
    return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


async def test_replicas_run_restart_when_killed_and_drain_on_one_signal(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    env = {**os.environ, "RAGBUS_NATS__URL": nats_url, "RAGBUS_METRICS__ENABLED": "false"}
    proc = await anyio.open_process(
        [*RAGBUS, "actor", "router", "--replicas", "2"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        first = await wait_for_instances(nc, "router", 2)
        replicas = _children(proc.pid)
        assert len(replicas) == 2

        victim = min(replicas)
        os.kill(victim, signal.SIGKILL)
        with anyio.fail_after(30):  # the dead replica's service entry goes with its connection
            while (await wait_for_instances(nc, "router", 2)) == first:  # noqa: ASYNC110 - polling another process
                await anyio.sleep(0.2)
        assert victim not in _children(proc.pid)
        assert len(_children(proc.pid)) == 2

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
    replicas = _Replicas([sys.executable, "-c", "raise SystemExit(3)"], [dict(os.environ)],
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
