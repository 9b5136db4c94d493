"""``ragbus cache stats|purge``: the shared caches are JetStream KV buckets."""

from __future__ import annotations

import argparse

import anyio
from nats.js.errors import NotFoundError
from rich.console import Console
from rich.table import Table

from ragbus.config import Loaded
from ragbus.subjects import Subjects

from ..security import CACHE_BUCKETS, connect_as

__all__ = ("add_commands",)

out = Console()


def _cmd_cache(args: argparse.Namespace) -> int:
    loaded: Loaded = args.loaded
    s = Subjects(loaded.settings.subject_prefix)
    names = list(CACHE_BUCKETS) if args.which in (None, "all") else [args.which]

    async def run() -> None:
        nc = await connect_as(loaded.settings.nats, loaded.settings.security, "admin",
                              url=args.nats_url, name="ragbus-cache", max_reconnect_attempts=2)
        js = nc.jetstream()
        table = Table("cache", "bucket", "entries", "bytes", title="caches")
        try:
            for name in names:
                bucket = s.bucket(name)
                stream = f"KV_{bucket}"
                try:
                    if args.cache_command == "purge":
                        await js.purge_stream(stream)
                    info = await js.stream_info(stream)
                    table.add_row(name, bucket, str(info.state.messages),
                                  str(info.state.bytes))
                except NotFoundError:
                    table.add_row(name, bucket, "-", "not created yet")
        finally:
            await nc.close()
        out.print(table)

    anyio.run(run)
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cache = sub.add_parser("cache", help="inspect or purge the shared caches")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True)
    for verb, text in (("stats", "entries and bytes per cache"),
                       ("purge", "empty a cache (or all)")):
        parser = cache_sub.add_parser(verb, help=text)
        parser.add_argument("which", nargs="?", choices=[*CACHE_BUCKETS, "all"], default="all")
    cache.set_defaults(func=_cmd_cache, needs_nats=True)
