"""``ragbus``: run the system, one actor, or look at it."""

from __future__ import annotations

import argparse
import os
from collections.abc import Collection, Sequence

import anyio
import msgspec
from rich.console import Console
from rich.table import Table

from ragbus.config import (
    ConfigError,
    Loaded,
    Settings,
    load_settings,
    production_problems,
    secret_values,
)

from ..errors import RagbusError
from ..logs import configure_logging
from ..security import role_for_actor
from ._ask import add_commands as add_ask_commands
from ._audit import add_commands as add_audit_commands
from ._backup import add_commands as add_backup_commands
from ._bridge import add_commands as add_bridge_commands
from ._cache import add_commands as add_cache_commands
from ._eval import add_commands as add_eval_commands
from ._health import add_commands as add_health_commands
from ._ingest import add_commands as add_ingest_commands
from ._server import NatsServerError
from ._session import add_commands as add_session_commands
from ._state import read_run_info
from ._stats import add_commands as add_stats_commands
from ._status import add_commands as add_status_commands

__all__ = ("actor_settings", "build_parser", "main")

out = Console()
err = Console(stderr=True)
#: the CLI's commands log in as admin; a command that logs in otherwise sets ``roles``
_CLI_ROLES = ("admin",)


def _load(args: argparse.Namespace, *, check: bool = True,
          roles: Collection[str] | None = None) -> Loaded:
    """Settings for this command; production checks only the ``roles`` it logs in as."""
    loaded = load_settings(args.config, check=check, roles=roles)
    configure_logging(loaded.settings.logging, secrets=secret_values(loaded.settings))
    return loaded


def _cmd_up(args: argparse.Namespace) -> int:
    from ragbus.actors import ACTORS, load_actor

    from ._run import run_actors

    loaded = _load(args)
    settings = loaded.settings
    if args.local_llm:
        r = settings.router
        settings = msgspec.structs.replace(settings, router=msgspec.structs.replace(
            r, local=msgspec.structs.replace(r.local, enabled=True)))
    names = args.only.split(",") if args.only else sorted(ACTORS)
    classes = {name: load_actor(name) for name in names}
    embedded = loaded.settings.nats.url is None
    if args.cluster < 1 or (args.cluster > 1 and not embedded):
        err.print("[red]error:[/] --cluster N starts N >= 1 embedded nodes; with nats.url set "
                  "ragbus uses that server (or cluster) instead")
        return 2
    if args.cluster > 1 and "nats.replicas" not in loaded.sources:
        settings = msgspec.structs.replace(settings, nats=msgspec.structs.replace(
            settings.nats, replicas=min(args.cluster, 3)))

    def ready(url: str, metrics_port: int | None, started: list[str]) -> None:
        where = ("embedded nats-server" if args.cluster == 1 else
                 f"embedded {args.cluster}-node cluster (replicas {settings.nats.replicas})"
                 ) if embedded else "NATS"
        out.print(f"[bold green]ragbus is up[/]: {where} at [cyan]{url}[/]")
        if metrics_port is not None:
            out.print(f"metrics at http://{loaded.settings.metrics.host}:{metrics_port}/metrics")
        if "bridge" in started:
            from ragbus.actors.bridge import page_url, upload_url, ws_url

            page = page_url(settings.bridge)
            out.print(f"page at {page}/ (WebSocket {ws_url(page)})")
            if (uploads := upload_url(settings.bridge)) is not None:
                out.print(f"uploads: POST {uploads}")
        out.print(f"actors: {', '.join(started) or '(none)'} — Ctrl-C drains and stops")

    # what this command changed in the settings, for actors in processes of their own
    child_env: dict[str, str] = {}
    if args.local_llm:
        child_env["RAGBUS_ROUTER__LOCAL__ENABLED"] = "true"
    if settings.nats.replicas != loaded.settings.nats.replicas:
        child_env["RAGBUS_NATS__REPLICAS"] = str(settings.nats.replicas)
    anyio.run(lambda: run_actors(settings, classes, embedded=embedded,
                                 ephemeral=args.ephemeral, on_ready=ready,
                                 cluster=args.cluster, processes=args.processes,
                                 config=args.config, child_env=child_env))
    out.print("stopped")
    return 0


def actor_settings(argv: Sequence[str]) -> Settings:
    """The settings ``ragbus`` run with ``argv`` (an ``actor`` command line, without the
    program) gives that actor, loaded and checked as :func:`main` does, logging configured:
    for a warm spare that prepares ahead of the replica it may become."""
    args = build_parser().parse_args(argv)
    if args.command != "actor":
        raise ValueError(f"not an actor's command line: {list(argv)}")
    if args.log_format:
        os.environ["RAGBUS_LOGGING__FORMAT"] = args.log_format
    return _load(args, roles={role_for_actor(args.name)}).settings


def _cmd_actor(args: argparse.Namespace) -> int:
    from ragbus.actors import ACTORS, load_actor

    from ._run import run_actors

    if args.replicas < 1:
        err.print(f"[red]error:[/] --replicas must be at least 1, not {args.replicas}")
        return 2
    supervise = not (args.no_supervise or args.child_of is not None)
    if not supervise and args.replicas != 1:
        err.print("[red]error:[/] --replicas N runs N child processes under this one: "
                  "it cannot be combined with --no-supervise")
        return 2
    if supervise and args.name not in ACTORS:
        load_actor(args.name)  # fails with the known names; the parent imports no actor
    loaded = _load(args, roles={role_for_actor(args.name)})
    url = _nats_url(loaded)  # no NATS to talk to fails here, not in a restarted child
    if supervise:
        from ._replicas import run_replicas

        m, rt = loaded.settings.metrics, loaded.settings.runtime
        return anyio.run(lambda: run_replicas(
            args.name, args.replicas, config=args.config,
            metrics_port=m.port if m.enabled and m.port else None,
            backoff_initial_s=rt.restart_backoff_initial_s,
            backoff_max_s=rt.restart_backoff_max_s,
            healthy_after_s=rt.restart_healthy_after_s, warm_spare=rt.warm_spare))
    cls = load_actor(args.name)
    anyio.run(lambda: run_actors(loaded.settings, {args.name: cls}, embedded=False,
                                 nats_url=url, parent_pid=args.child_of,
                                 restarts=args.restarts))
    return 0


def _nats_url(loaded: Loaded) -> str:
    if loaded.settings.nats.url:
        return loaded.settings.nats.url
    info = read_run_info(loaded.settings)
    if info is None:
        raise NatsServerError(
            "no NATS to talk to: set nats.url (RAGBUS_NATS__URL) or start `ragbus up` first"
        )
    return info.nats_url


def _cmd_config_show(args: argparse.Namespace) -> int:
    loaded = _load(args, check=False)
    table = Table(title=f"effective config{f' (file {loaded.file})' if loaded.file else ''}")
    table.add_column("key")
    table.add_column("value")
    table.add_column("source")
    for key, value, source in loaded.rows():
        table.add_row(key, value, source)
    out.print(table)
    if loaded.settings.environment == "production":
        for problem in production_problems(loaded.settings):
            err.print(f"[red]production would refuse to start:[/] {problem}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ragbus", description=__doc__)
    parser.add_argument("--config", help="TOML settings file (default: $RAGBUS_CONFIG, "
                        "else ./ragbus.toml if present)")
    parser.add_argument("--log-format", choices=["auto", "json", "console"],
                        help="log lines as JSON or for people (default: logging.format, "
                        "auto: console on a terminal, JSON otherwise)")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start NATS (embedded unless nats.url is set) and all actors")
    up.add_argument("--ephemeral", action="store_true",
                    help="keep the embedded server's JetStream data in a temporary directory")
    up.add_argument("--only", help="comma-separated actor names to start (default: all)")
    up.add_argument("--local-llm", action="store_true",
                    help="start the embedded llama.cpp server (SmolLM2-135M) for the router")
    up.add_argument("--processes", action="store_true",
                    help="run each actor in a child process of its own (restarted if it "
                    "dies) instead of all in this one: one core each, so a busy stage "
                    "does not delay the others")
    up.add_argument("--cluster", type=int, default=1, metavar="N",
                    help="start N embedded nats-server nodes clustered on loopback (with "
                    "nats.replicas raised to min(N, 3) unless it is set)")
    up.set_defaults(func=_cmd_up)

    actor = sub.add_parser("actor", help="run one actor against the configured NATS, in a "
                           "child process that is restarted if it dies")
    actor.add_argument("name")
    actor.add_argument("--replicas", type=int, default=1,
                       help="run N processes of it, e.g. one per core for a CPU-bound actor "
                       "(they share a queue group; metrics on port, port+1, ...)")
    actor.add_argument("--no-supervise", action="store_true",
                       help="run the actor in this process, with no parent to restart it "
                       "(for systemd, compose or Kubernetes, which restart it themselves)")
    # what the supervising parent tells its children (not for people)
    actor.add_argument("--child-of", type=int, metavar="PID", help=argparse.SUPPRESS)
    actor.add_argument("--restarts", type=int, default=0, help=argparse.SUPPRESS)
    actor.set_defaults(func=_cmd_actor)


    add_status_commands(sub)
    add_ingest_commands(sub)
    add_audit_commands(sub)
    add_stats_commands(sub)
    add_cache_commands(sub)
    add_ask_commands(sub)
    add_eval_commands(sub)
    add_bridge_commands(sub)
    add_health_commands(sub)
    add_backup_commands(sub)
    add_session_commands(sub)

    config = sub.add_parser("config", help="inspect settings")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="effective settings, secrets masked, with sources")
    show.set_defaults(func=_cmd_config_show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.log_format:  # as the setting's variable, so processes started from here agree
        os.environ["RAGBUS_LOGGING__FORMAT"] = args.log_format
    try:
        needs_nats = getattr(args, "needs_nats", False)
        if callable(needs_nats):  # a command that needs NATS only in some forms
            needs_nats = needs_nats(args)
        if needs_nats:
            args.loaded = _load(args, roles=getattr(args, "roles", _CLI_ROLES))
            args.nats_url = _nats_url(args.loaded)
        code: int = args.func(args)
    except (ConfigError, NatsServerError, LookupError) as exc:
        err.print(f"[red]error:[/] {exc}")
        return 2
    except RagbusError as exc:
        err.print(f"[red]{exc.code.value}:[/] {exc.message}")
        return 1
    except KeyboardInterrupt:
        return 130
    return code

