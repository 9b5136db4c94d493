"""``ragbus session list|show|export|delete``: conversation memory, through the trimmer.

The memory is the context-trimmer's (a KV entry per session, keyed by a hash of the
session id), so these are requests to it on ``<prefix>.session.*``, not reads of
the bucket: the trimmer decides what a session's memory is, and deleting goes
through the same lock as a turn being stored. Deleting forgets the turns and the
brief; it does not touch the audit trail, which is immutable, nor backups.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

import msgspec
from rich.console import Console
from rich.table import Table

from ragbus.subjects import (
    SessionDelete,
    SessionDeleted,
    SessionGet,
    SessionInfo,
    SessionList,
    SessionListed,
    Subjects,
)

from ..client import Client
from ..connection import NATS
from ._ingest import _with_nats

__all__ = ("add_commands",)

out = Console()


def _when(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _print_session(info: SessionInfo) -> None:
    out.print(f"[bold]session[/] {info.session_id} · {len(info.turns)} turns kept · "
              f"{info.folded} folded into the brief · updated {_when(info.updated_at)} · "
              f"expires {_when(info.expires_at)}", highlight=False)
    if info.brief:
        out.print(f"[bold]brief[/] ({info.brief_source or 'unknown'}): {info.brief}",
                  highlight=False)
    table = Table("at", "request id", "question", "answer")
    for t in info.turns:
        table.add_row(_when(t.at), t.request_id, t.question, t.answer)
    out.print(table)


def _cmd_session(args: argparse.Namespace) -> int:
    async def work(nc: NATS, s: Subjects) -> int:
        client = Client(nc, s)
        command = args.session_command
        if command == "list":
            listed = await client.request(s.session("list"), SessionList(limit=args.limit),
                                          SessionListed)
            table = Table("session id", "turns", "folded", "brief", "updated",
                          title=f"{listed.total} sessions with memory")
            for m in listed.sessions:
                table.add_row(m.session_id, str(m.turns), str(m.folded),
                              "yes" if m.has_brief else "", _when(m.updated_at))
            out.print(table)
        elif command == "delete":
            deleted = await client.request(s.session("delete"),
                                           SessionDelete(session_id=args.session_id),
                                           SessionDeleted)
            if deleted.existed:
                out.print(f"{deleted.session_id}: memory deleted ({deleted.turns} turns and "
                          "the brief); audit events are immutable and keep what they recorded",
                          highlight=False)
            else:
                out.print(f"{deleted.session_id}: no memory was kept (nothing to delete)",
                          highlight=False)
        else:
            info = await client.request(s.session("get"), SessionGet(session_id=args.session_id),
                                        SessionInfo)
            if command == "show":
                _print_session(info)
            else:
                data = msgspec.json.format(msgspec.json.encode(info)) + b"\n"
                if args.out is None or str(args.out) == "-":
                    sys.stdout.buffer.write(data)
                    sys.stdout.flush()
                else:
                    args.out.write_bytes(data)
                    print(f"wrote {len(info.turns)} turns of {info.session_id} to {args.out}",
                          file=sys.stderr)
        return 0

    return _with_nats(args, work)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    session = sub.add_parser("session", help="list, show, export or delete a conversation's "
                             "memory (the context-trimmer's)")
    verbs = session.add_subparsers(dest="session_command", required=True)
    verbs.add_parser("list", help="sessions with memory, newest first").add_argument(
        "--limit", type=int, default=100)
    verbs.add_parser("show", help="a session's turns and brief").add_argument("session_id")
    export = verbs.add_parser("export", help="a session's memory as JSON")
    export.add_argument("session_id")
    export.add_argument("--out", type=Path, default=None,
                        help="write to this file (default: standard output)")
    verbs.add_parser("delete", help="forget a session's turns and brief (audit events are "
                     "immutable: they stay)").add_argument("session_id")
    session.set_defaults(func=_cmd_session, needs_nats=True)
