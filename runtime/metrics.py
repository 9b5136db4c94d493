"""Prometheus metrics every actor records, labelled by actor and endpoint."""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ("Metrics",)

M = TypeVar("M", Counter, Gauge, Histogram)

# no `<name>_created` gauge beside every counter and histogram series: it would double the
# series Prometheus stores, and no dashboard or alert reads when a series was created
disable_created_metrics()  # type: ignore[no-untyped-call]

# request/reply is ~0.5 ms on loopback; embedding and generation take seconds
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            10.0, 30.0, 60.0)


class _Connection(Protocol):
    """What is read of a nats-py client (``nats.aio.client.Client`` has both)."""

    @property
    def is_connected(self) -> bool: ...

    stats: dict[str, int]


class _Connections(Collector):
    """Each actor's NATS connection, read when scraped rather than kept up by callbacks.

    nats-py already knows whether it is connected and how often it reconnected; reading
    that at scrape time needs no ``disconnected_cb``/``reconnected_cb`` (which the caller
    may want for itself) and is never stale.
    """

    def __init__(self) -> None:
        self.watched: dict[str, _Connection] = {}

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("ragbus_nats_connected",
                               "1 while the actor's NATS connection is up, else 0",
                               labels=["actor"])
        again = CounterMetricFamily("ragbus_nats_reconnects",
                                    "Reconnections of the actor's current NATS connection "
                                    "(starts at 0 when the actor restarts)", labels=["actor"])
        for actor, nc in sorted(self.watched.items()):
            up.add_metric([actor], 1.0 if nc.is_connected else 0.0)
            again.add_metric([actor], float(nc.stats.get("reconnects", 0)))
        yield up
        yield again

    def describe(self) -> Iterator[Metric]:
        return self.collect()


class Metrics:
    """One registry per process; actors in the same process share it, told apart by label."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._extra: dict[str, Counter | Gauge | Histogram] = {}
        self.messages = Counter("ragbus_messages", "Messages received by an actor endpoint",
                                ["actor", "endpoint"], registry=r)
        self.errors = Counter("ragbus_errors", "Error replies by code",
                              ["actor", "endpoint", "code"], registry=r)
        self.latency = Histogram("ragbus_handler_seconds", "Handler latency",
                                 ["actor", "endpoint"], buckets=_BUCKETS, registry=r)
        self.inflight = Gauge("ragbus_inflight", "Requests being handled", ["actor"],
                              registry=r)
        self.admission_limit = Gauge(
            "ragbus_admission_limit", "A first hop's adaptive limit of requests in flight",
            ["actor", "endpoint"], registry=r)
        self.restarts = Counter("ragbus_actor_restarts", "Actor restarts by the supervisor",
                                ["actor"], registry=r)
        self._connections = _Connections()
        r.register(self._connections)

    def watch_connection(self, actor: str, nc: _Connection) -> None:
        """Export ``nc``'s state as ``ragbus_nats_connected`` and ``ragbus_nats_reconnects``
        for ``actor`` (a restarted actor's new connection replaces its old one)."""
        self._connections.watched[actor] = nc

    def get(self, kind: type[M], name: str, doc: str, labels: Sequence[str] = (),
            **kwargs: Any) -> M:
        """An actor-specific metric, created once per registry (replicas in one process
        share it, told apart by their labels)."""
        existing = self._extra.get(name)
        if existing is None:
            existing = kind(name, doc, list(labels), registry=self.registry, **kwargs)
            self._extra[name] = existing
        if not isinstance(existing, kind):
            raise TypeError(f"metric {name} already exists as {type(existing).__name__}")
        return existing

    def serve(self, host: str, port: int) -> tuple[int, Callable[[], None]]:
        """Expose /metrics over HTTP; returns the bound port and a function that stops it.

        A port already taken (another ragbus process on the host, say ``ragbus up`` beside
        ``ragbus actor --replicas``) is no reason to stop an actor: a free port is taken
        instead, with a warning that says which.
        """
        server: Any
        try:
            server, thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            if port == 0 or exc.errno != errno.EADDRINUSE:
                raise
            server, thread = start_http_server(0, addr=host, registry=self.registry)
            structlog.get_logger().warning(
                "metrics.port_in_use", wanted=port, serving_on=int(server.server_port),
                advice="set metrics.port (RAGBUS_METRICS__PORT) to a free port, or 0")

        def close() -> None:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

        return int(server.server_port), close
