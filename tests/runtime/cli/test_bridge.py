"""``ragbus bridge``: the command runs the bridge against the configured NATS until a signal."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
from pathlib import Path

import anyio
import httpx
from anyio.abc import ByteReceiveStream

from ragbus.config import Settings
from ragbus.runtime.cli._bridge import add_commands, bridge_settings
from tests.support.cli import RAGBUS
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[3]


def test_host_and_port_on_the_command_line_override_the_settings() -> None:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bridge", "--host", "0.0.0.0", "--port", "9000"])
    assert args.needs_nats
    changed = bridge_settings(Settings(), args.host, args.port)
    assert (changed.bridge.host, changed.bridge.port) == ("0.0.0.0", 9000)
    unchanged = bridge_settings(Settings(), None, None)
    assert unchanged.bridge == Settings().bridge


async def read_all(stream: ByteReceiveStream | None) -> str:
    chunks: list[bytes] = []
    if stream is not None:
        with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError):
            while True:
                chunks.append(await stream.receive())
    return b"".join(chunks).decode()


async def test_ragbus_bridge_serves_until_interrupted(nats_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "RAGBUS_NATS__URL": nats_url, "RAGBUS_DATA_DIR": str(tmp_path),
           "RAGBUS_METRICS__ENABLED": "false", "RAGBUS_LOGGING__FORMAT": "json",
           "RAGBUS_BRIDGE__READY_ACTORS": "bridge"}
    output: dict[str, str] = {}
    async with await anyio.open_process(
        [*RAGBUS, "bridge", "--port", str(port)], cwd=ROOT, env=env
    ) as proc, anyio.create_task_group() as tg:

        async def collect(name: str, stream: ByteReceiveStream | None) -> None:
            output[name] = await read_all(stream)

        tg.start_soon(collect, "out", proc.stdout)
        tg.start_soon(collect, "err", proc.stderr)
        ready = None
        try:
            async with httpx.AsyncClient(timeout=1) as http:
                with anyio.fail_after(20):
                    while ready is None:
                        try:
                            ready = await http.get(f"http://127.0.0.1:{port}/readyz")
                        except httpx.TransportError:
                            assert proc.returncode is None
                            await anyio.sleep(0.1)
            proc.send_signal(signal.SIGINT)
            with anyio.fail_after(15):
                code = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
    assert ready is not None
    assert ready.status_code == 200
    assert ready.json()["actors"]["bridge"] == 1
    assert code == 0, output.get("err")
    assert "bridge is up" in output["out"]
    assert f"http://127.0.0.1:{port}/" in output["out"]
    assert f"uploads: POST http://127.0.0.1:{port + 1}/upload" in output["out"]
    assert "stopped" in output["out"]
