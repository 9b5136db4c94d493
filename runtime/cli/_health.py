"""``ragbus health NAME``: is the actor in *this* container serving and on the bus?

A container's health check must judge its own process, so this asks the process's
own metrics endpoint (``metrics.port``, and the ports after it for ``--replicas``)
whether ``ragbus_nats_connected{actor=NAME}`` is 1, rather than pinging
``$SRV.PING.NAME`` on the bus: a ping by name is answered by any replica in any
container (a dead one looks healthy while a sibling answers), and the actor roles
may not publish on ``$SRV`` anyway. That the actors answer pings is what the bridge's
``/readyz`` checks (``bridge.ready_actors``); ``ragbus health bridge`` asks it too.

No NATS credential is needed: it reads only loopback HTTP.
"""

from __future__ import annotations

import argparse

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from ragbus.config import Settings, load_settings

__all__ = ("add_commands", "probe")

out = Console()
err = Console(stderr=True)

_ANY_ADDRESS = ("", "0.0.0.0", "::")


def _loopback(host: str) -> str:
    """Where to reach a server bound to ``host`` from inside its container."""
    if host in _ANY_ADDRESS:
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _connected(text: str, name: str) -> float | None:
    for family in text_string_to_metric_families(text):
        if family.name == "ragbus_nats_connected":
            for s in family.samples:
                if s.labels.get("actor") == name:
                    return s.value
    return None


def probe(settings: Settings, name: str, *, replicas: int = 1,
          timeout_s: float = 3.0) -> list[str]:
    """What is wrong with actor ``name`` served by this host's process(es); [] if healthy."""
    m = settings.metrics
    if not m.enabled or not m.port:
        return ["metrics are disabled or on a random port (metrics.port = 0): the health "
                "check reads them; set metrics.enabled and a fixed metrics.port"]
    problems: list[str] = []
    host = _loopback(m.host)
    for i in range(replicas):
        url = f"http://{host}:{m.port + i}/metrics"
        try:
            response = httpx.get(url, timeout=timeout_s)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            problems.append(f"{url}: {exc!r}")
            continue
        connected = _connected(response.text, name)
        if connected is None:
            problems.append(f"{url}: no actor {name!r} runs in this process")
        elif connected != 1.0:
            problems.append(f"{url}: {name} is not connected to NATS")
    if name == "bridge":
        b = settings.bridge
        scheme = "https" if b.tls_cert else "http"
        url = f"{scheme}://{_loopback(b.host)}:{b.port}/readyz"
        try:
            # its own certificate, on loopback: whether it is trusted is not this check's job
            response = httpx.get(url, timeout=timeout_s, verify=False)
        except httpx.HTTPError as exc:
            problems.append(f"{url}: {exc!r}")
        else:
            if response.status_code != 200:
                problems.append(f"{url}: {response.status_code} {response.text.strip()}")
    return problems


def _cmd_health(args: argparse.Namespace) -> int:
    from ragbus.actors import ACTORS

    if args.name not in ACTORS:
        err.print(f"[red]error:[/] no actor named {args.name!r}; known: {', '.join(ACTORS)}")
        return 2
    # nothing here logs in, so production's credential checks do not apply
    settings = load_settings(args.config, check=False).settings
    problems = probe(settings, args.name, replicas=args.replicas, timeout_s=args.timeout)
    for problem in problems:
        err.print(f"[red]unhealthy:[/] {problem}")
    if not problems:
        out.print(f"{args.name}: healthy")
    return 1 if problems else 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    health = sub.add_parser("health", help="exit 0 if the actor this host runs is serving and "
                            "connected to NATS (a container health check)")
    health.add_argument("name", help="the actor, as `ragbus actor NAME` or `bridge`")
    health.add_argument("--replicas", type=int, default=1,
                        help="check N processes started with --replicas N (metrics on port, "
                        "port+1, ...)")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds per HTTP request")
    health.set_defaults(func=_cmd_health)
