"""``ragbus bridge``: the WebSocket bridge and its page, on its own, against the running NATS."""

from __future__ import annotations

import argparse

import anyio
import msgspec
from rich.console import Console

from ragbus.config import Loaded, Settings

__all__ = ("add_commands", "bridge_settings")

out = Console()


def bridge_settings(settings: Settings, host: str | None, port: int | None) -> Settings:
    """``settings`` with the command line's ``--host``/``--port`` applied."""
    changes: dict[str, object] = {}
    if host is not None:
        changes["host"] = host
    if port is not None:
        changes["port"] = port
    if not changes:
        return settings
    return msgspec.structs.replace(settings,
                                   bridge=msgspec.structs.replace(settings.bridge, **changes))


def _cmd_bridge(args: argparse.Namespace) -> int:
    from ragbus.actors.bridge import Bridge, page_url, upload_url, ws_url

    from ._run import run_actors

    loaded: Loaded = args.loaded
    settings = bridge_settings(loaded.settings, args.host, args.port)
    cfg = settings.bridge

    def ready(url: str, metrics_port: int | None, started: list[str]) -> None:
        out.print(f"[bold green]bridge is up[/] on NATS [cyan]{url}[/]")
        if cfg.port:
            page = page_url(cfg)
            out.print(f"page at {page}/ — WebSocket {ws_url(page)} — Ctrl-C stops")
            if (uploads := upload_url(cfg)) is not None:
                out.print(f"uploads: POST {uploads}")
        else:
            out.print("port 0: the bound address is in the `bridge.listening` log line")

    anyio.run(lambda: run_actors(settings, {"bridge": Bridge}, embedded=False,
                                 nats_url=args.nats_url, on_ready=ready))
    out.print("stopped")
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bridge = sub.add_parser("bridge", help="serve the WebSocket bridge and the browser page")
    bridge.add_argument("--host", help="address to listen on (default: bridge.host)")
    bridge.add_argument("--port", type=int, help="port to listen on (default: bridge.port; "
                        "0 picks a free one)")
    bridge.set_defaults(func=_cmd_bridge, needs_nats=True, roles=("bridge",))
