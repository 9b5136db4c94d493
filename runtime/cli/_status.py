"""``ragbus status``: the actors found through micro-service discovery, and the providers'
circuit breakers as the routers stored them."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
from nats.js.errors import BucketNotFoundError, NotFoundError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ragbus.config import Loaded
from ragbus.subjects import (
    BreakerState,
    BreakerTransition,
    Subjects,
    breakers_bucket,
    now_ms,
    stored_transition,
)

from .. import discover
from ..connection import NATS
from ..jetstream import kv_entries
from ..security import connect_as
from ._state import read_run_info

__all__ = ("Node", "ReplicaLag", "StreamState", "add_commands", "breaker_states",
           "breaker_table", "cluster_nodes", "index_replicas", "replica_table",
           "stream_states")

out = Console()


async def breaker_states(nc: NATS, subjects: Subjects) -> list[BreakerTransition]:
    """The stored breaker of every provider (empty when no router has written one)."""
    try:
        kv = await nc.jetstream().key_value(breakers_bucket(subjects).bucket)
    except BucketNotFoundError:
        return []
    found = (stored_transition(e.value, e.revision) for e in await kv_entries(kv))
    return sorted((t for t in found if t is not None), key=lambda t: t.provider)


def breaker_table(states: list[BreakerTransition]) -> Table:
    """One row per provider whose breaker has ever moved."""
    table = Table("provider", "breaker", "until", "reason", "by replica", "last error",
                  title="provider circuit breakers")
    now = now_ms()
    colours = {BreakerState.CLOSED: "green", BreakerState.HALF_OPEN: "yellow",
               BreakerState.OPEN: "red"}
    for t in states:
        until = ""
        if t.until is not None and t.state != BreakerState.CLOSED:
            left = (t.until - now) / 1000
            until = f"in {left:.0f}s" if left > 0 else "probe due"
        table.add_row(t.provider, f"[{colours[t.state]}]{t.state.value}[/]", until, t.reason,
                      t.replica, escape(t.message))
    return table


@dataclass(frozen=True, slots=True)
class StreamState:
    """Where a stream (or KV bucket) lives: its leader and how current each copy is."""

    name: str
    replicas: int
    leader: str | None
    followers: tuple[tuple[str, bool, int], ...]  # name, current, lag (messages)
    messages: int


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    url: str
    meta_leader: str | None
    up: bool


async def stream_states(nc: NATS) -> list[StreamState]:
    """Every stream and KV bucket of the account, with its replicas' state."""
    found: list[StreamState] = []
    for info in await nc.jetstream().streams_info():
        cluster = info.cluster
        followers = tuple((p.name or "?", bool(p.current), int(p.lag or 0))
                          for p in (cluster.replicas or [])) if cluster else ()
        found.append(StreamState(name=info.config.name or "?",
                                 replicas=info.config.num_replicas or 1,
                                 leader=cluster.leader if cluster else None,
                                 followers=followers, messages=info.state.messages))
    return sorted(found, key=lambda s: s.name)


@dataclass(frozen=True, slots=True)
class ReplicaLag:
    """One shard replica's place in the index stream, as its consumer says: the last
    update delivered to it (applied within a batch of it), the updates not yet delivered,
    and how long the oldest of those has been waiting."""

    shard: str
    replica: str
    delivered: int
    behind: int
    behind_s: float


async def index_replicas(nc: NATS, subjects: Subjects) -> list[ReplicaLag]:
    """Every shard replica that has read the index stream (a replica that is down keeps
    its consumer, and shows how far behind it has fallen)."""
    js = nc.jetstream()
    stream = subjects.index_stream
    try:
        consumers = await js.consumers_info(stream)
    except NotFoundError:
        return []
    found: list[ReplicaLag] = []
    for c in consumers:
        words = (c.config.description or "").split()
        if not (c.name or "").startswith("apply_") or len(words) != 5:
            continue  # "ragbus shard <shard> replica <replica>"
        delivered = (c.delivered.stream_seq if c.delivered else 0) or 0
        behind, behind_s = c.num_pending or 0, 0.0
        if behind:
            try:
                oldest = await js.get_msg(stream, seq=delivered + 1,
                                          subject=c.config.filter_subject, next=True)
                if oldest.time is not None:
                    behind_s = max(0.0, time.time() - oldest.time.timestamp())
            except NotFoundError:
                pass
        found.append(ReplicaLag(shard=words[2], replica=words[4], delivered=delivered,
                                behind=behind, behind_s=behind_s))
    # a replica recreates its consumer after a fault; one left behind idles out: the
    # furthest is the one in use
    newest: dict[tuple[str, str], ReplicaLag] = {}
    for r in found:
        kept = newest.get((r.shard, r.replica))
        if kept is None or r.delivered > kept.delivered:
            newest[(r.shard, r.replica)] = r
    return sorted(newest.values(), key=lambda r: (r.shard, r.replica))


def replica_table(replicas: list[ReplicaLag]) -> Table:
    table = Table("shard", "replica", "applied up to", "behind (updates)", "behind (s)",
                  title="index shard replicas")
    for r in replicas:
        colour = "green" if not r.behind else "yellow"
        table.add_row(r.shard, r.replica, str(r.delivered), f"[{colour}]{r.behind}[/]",
                      f"{r.behind_s:.1f}")
    return table


async def cluster_nodes(monitors: list[str]) -> list[Node]:
    """The embedded nodes ``ragbus up --cluster`` started, read from their monitoring
    endpoints (a node that does not answer is shown down)."""
    nodes: list[Node] = []
    async with httpx.AsyncClient(timeout=2.0) as http:
        for url in monitors:
            try:
                varz = (await http.get(f"{url}/varz")).json()
                jsz = (await http.get(f"{url}/jsz")).json()
            except (httpx.HTTPError, ValueError):
                nodes.append(Node(name="?", url=url, meta_leader=None, up=False))
                continue
            nodes.append(Node(name=str(varz.get("server_name", "?")),
                              url=f"nats://{varz.get('host', '127.0.0.1')}:{varz.get('port')}",
                              meta_leader=(jsz.get("meta_cluster") or {}).get("leader"),
                              up=True))
    return nodes


def _cluster_tables(nodes: list[Node], streams: list[StreamState]) -> list[Table]:
    tables: list[Table] = []
    if nodes:
        leader = next((n.meta_leader for n in nodes if n.meta_leader), None)
        table = Table("node", "url", "state", title="NATS nodes")
        for n in nodes:
            state = ("[red]down[/]" if not n.up else
                     "[bold]JetStream meta leader[/]" if n.name == leader else "up")
            table.add_row(n.name, n.url, state)
        tables.append(table)
    if streams:
        table = Table("stream", "replicas", "leader", "followers", "messages",
                      title="JetStream streams and buckets")
        for st in streams:
            followers = ", ".join(f"{name} ({'current' if current else f'lag {lag}'})"
                                  for name, current, lag in st.followers) or "-"
            table.add_row(st.name, str(st.replicas), st.leader or "-", followers,
                          str(st.messages))
        tables.append(table)
    return tables


def _cmd_status(args: argparse.Namespace) -> int:
    loaded: Loaded = args.loaded
    url: str = args.nats_url

    info = read_run_info(loaded.settings)
    monitors = info.monitors if info is not None and info.nats_url == url else []

    async def run() -> tuple[list[dict[str, Any]], list[BreakerTransition], list[Table]]:
        subjects = Subjects(loaded.settings.subject_prefix)
        nc = await connect_as(loaded.settings.nats, loaded.settings.security, "admin", url=url,
                              name="ragbus-status", max_reconnect_attempts=0)
        try:
            services = await discover(nc, wait_s=args.wait)
            breakers = await breaker_states(nc, subjects)
            try:
                streams = await stream_states(nc)
                replicas = await index_replicas(nc, subjects)
            except Exception:  # JetStream unavailable (no leader): the nodes say more
                streams, replicas = [], []
            tables = _cluster_tables(await cluster_nodes(monitors), streams)
            return services, breakers, [*tables, *([replica_table(replicas)] if replicas
                                                   else [])]
        finally:
            await nc.close()

    services, breakers, cluster = anyio.run(run)
    table = Table(title=f"actors on {url}")
    for col in ("actor", "id", "version", "endpoint", "requests", "errors", "avg ms",
                "last error"):
        table.add_column(col)
    for svc in services:
        for ep in svc.get("endpoints") or [{}]:
            avg = ep.get("average_processing_time", 0) / 1e6
            table.add_row(str(svc.get("name")), str(svc.get("id")), str(svc.get("version")),
                          f"{ep.get('name', '')} ({ep.get('subject', '')})",
                          str(ep.get("num_requests", 0)), str(ep.get("num_errors", 0)),
                          f"{avg:.2f}", str(ep.get("last_error", "")))
    out.print(table if services else f"no actors answered on {url}")
    if breakers:
        out.print(breaker_table(breakers))
    for extra in cluster:
        out.print(extra)
    return 0 if services else 1


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = sub.add_parser("status", help="list running actors and their stats")
    status.add_argument("--wait", type=float, default=0.5, help="seconds to collect answers")
    status.set_defaults(func=_cmd_status, needs_nats=True)
