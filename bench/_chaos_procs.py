"""bench.chaos's processes: supervised units, their children, and their metrics.

A *unit* is one ``ragbus actor NAME --replicas N`` parent, as deployed. Two replicas
that need settings of their own (a retriever replica's data dir and replica id, a
bridge's port) are two units of one replica each: the parent gives its children one
environment. Every child serves Prometheus metrics on the unit's port + its index;
the bench reads them there, as a scraper would.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from ragbus.runtime.cli import spare_state

__all__ = ("CounterTotals", "Unit", "children", "free_ports", "rss_mb", "scrape")


@dataclass(frozen=True, slots=True)
class Unit:
    """One supervising parent: ``label`` names its log file, ``actor`` what it runs."""

    label: str
    actor: str
    replicas: int
    metrics_port: int
    env: dict[str, str] = field(default_factory=dict)

    @property
    def ports(self) -> list[int]:
        return [self.metrics_port + i for i in range(self.replicas)]

    def start(self, root: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        """``ragbus actor NAME --replicas N``; its logs (JSON) under ``logs/``."""
        with (root / "logs" / f"{self.label}.log").open("wb") as sink:
            return subprocess.Popen(
                [sys.executable, "-m", "ragbus.runtime.cli", "actor", self.actor,
                 "--replicas", str(self.replicas)], cwd=root,
                env={**env, **self.env, "RAGBUS_METRICS__ENABLED": "true",
                     "RAGBUS_METRICS__PORT": str(self.metrics_port)},
                stdout=subprocess.DEVNULL, stderr=sink)

    def deaths(self, root: Path) -> list[dict[str, object]]:
        """What the parent logged of each dead child (``replica.died``)."""
        path = root / "logs" / f"{self.label}.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()
                if '"replica.died"' in line]


def free_ports(n: int) -> int:
    """The first of ``n`` consecutive loopback ports that were free a moment ago."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + n > 65535:
            continue
        socks = []
        try:
            for port in range(base, base + n):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()


def children(pid: int, *, spares: bool = False) -> list[int]:
    """The replicas a ``ragbus actor`` parent runs; with ``spares``, its warm spare too
    (``runtime.warm_spare``: a kill meant for a replica must not hit the spare)."""
    try:
        found = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []
    return found if spares else [p for p in found if spare_state(p) is None]


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


#: one scrape: (sample name, sorted label pairs) -> value
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int, timeout_s: float = 1.0) -> Samples | None:
    """Every sample a child's ``/metrics`` serves (None: it did not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                    timeout=timeout_s) as r:
            text = r.read().decode()
    except OSError:
        return None
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@dataclass
class CounterTotals:
    """Counters summed over every process that served them on a port in turn. A child
    restarted starts its counters at 0; it is told how often its replica restarted, and
    says so in ``ragbus_actor_restarts_total``, which tells one process's values from
    the next one's. What a process counted after its last scrape and before it died is
    not seen (scrape often)."""

    last: dict[tuple[int, float, str], float] = field(default_factory=dict)

    def see(self, port: int, samples: Samples, name: str, **labels: str) -> None:
        """Keep the sum of ``name``'s samples with ``labels`` in this scrape of ``port``."""
        life = next((v for (n, _), v in samples.items()
                     if n == "ragbus_actor_restarts_total"), 0.0)
        want = set(labels.items())
        value = sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))
        self.last[(port, life, name + repr(sorted(want)))] = value

    def total(self, name: str, **labels: str) -> float:
        key = name + repr(sorted(labels.items()))
        return sum(v for (_, _, k), v in self.last.items() if k == key)
