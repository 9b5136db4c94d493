"""``ragbus status``: the actors found through micro-service discovery, and the providers'
circuit breakers as the routers stored them."""

from __future__ import annotations

import argparse
from typing import Any

import anyio
from nats.js.errors import BucketNotFoundError
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

__all__ = ("add_commands", "breaker_states", "breaker_table")

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


def _cmd_status(args: argparse.Namespace) -> int:
    loaded: Loaded = args.loaded
    url: str = args.nats_url

    async def run() -> tuple[list[dict[str, Any]], list[BreakerTransition]]:
        nc = await connect_as(loaded.settings.nats, loaded.settings.security, "admin", url=url,
                              name="ragbus-status", max_reconnect_attempts=0)
        try:
            services = await discover(nc, wait_s=args.wait)
            return services, await breaker_states(nc, Subjects(loaded.settings.subject_prefix))
        finally:
            await nc.close()

    services, breakers = anyio.run(run)
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
    return 0 if services else 1


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = sub.add_parser("status", help="list running actors and their stats")
    status.add_argument("--wait", type=float, default=0.5, help="seconds to collect answers")
    status.set_defaults(func=_cmd_status, needs_nats=True)
