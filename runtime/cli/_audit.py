"""``ragbus audit tail|verify|export``: the audit store from a shell.

These read the store's files (on the audit-logger's host), not the bus: checking
the chain must not depend on the system being up.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

from ragbus.config import load_settings

if TYPE_CHECKING:
    from ragbus.actors.audit import Entry

__all__ = ("add_commands",)

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _store(args: argparse.Namespace) -> Path:
    from ragbus.actors.audit import store_dir

    if args.store:
        return Path(args.store)
    return store_dir(load_settings(args.config, check=False).settings)


def _line(entry: Entry) -> str:
    e = entry.event
    when = datetime.fromtimestamp(e.time / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    parts = [when[:-4] + "Z", f"#{entry.seq}", e.kind, e.outcome.value, f"actor={e.actor}"]
    for label, value in (("subject", e.subject), ("request", e.request_id),
                         ("session", e.session), ("code", e.code)):
        if value:
            parts.append(f"{label}={value}")
    if e.duration_ms is not None:
        parts.append(f"{e.duration_ms:.1f}ms")
    parts.extend(f"{k}={v}" for k, v in e.sizes.items())
    return " ".join(parts)


def _print(entry: Entry, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(entry.line.decode() + "\n")
        sys.stdout.flush()
    else:
        out.print(escape(_line(entry)))


def _cmd_tail(args: argparse.Namespace) -> int:
    from ragbus.actors.audit import follow, last_entries

    store = _store(args)
    shown = last_entries(store, args.lines, kind=args.kind)
    for entry in shown:
        _print(entry, args.json)
    if not args.follow:
        if not shown:
            err.print(f"no audit records{f' of kind {args.kind}' if args.kind else ''} in "
                      f"{store}")
        return 0
    after = shown[-1].seq if shown else 0
    try:
        for entry in follow(store, kind=args.kind, after_seq=after, poll_s=args.poll):
            _print(entry, args.json)
    except KeyboardInterrupt:
        return 0
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from ragbus.actors.audit import verify_store

    store = _store(args)
    if not store.is_dir():
        err.print(f"[red]error:[/] no audit store at {store}: pass --store, or set "
                  "audit.store_dir (RAGBUS_AUDIT__STORE_DIR) as the audit-logger has it")
        return 2
    report = verify_store(store)
    if report.note:
        err.print(f"note: {report.note}")
    if report.problem is not None:
        err.print(f"[red]broken:[/] {escape(str(report.problem))} (in {store}; "
                  f"{report.records} records before it check out)")
        return 1
    dup = f", {report.duplicates} duplicate event ids" if report.duplicates else ""
    out.print(f"[green]ok:[/] {report.records} records in {report.files} files{dup}; "
              f"chain head {report.head}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ragbus.actors.audit import parse_time, read_entries

    try:
        since = parse_time(args.since)
        until = parse_time(args.until) if args.until else None
    except ValueError as exc:
        err.print(f"[red]error:[/] {exc}")
        return 2
    target = open(args.output, "wb") if args.output else sys.stdout.buffer  # noqa: SIM115
    count = 0
    try:
        for entry in read_entries(_store(args), since_ms=since, until_ms=until, kind=args.kind):
            target.write(entry.line + b"\n")
            count += 1
    finally:
        if args.output:
            target.close()
        else:
            target.flush()
    err.print(f"exported {count} records")
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = sub.add_parser("audit", help="read and check the audit store")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)

    tail = audit_sub.add_parser("tail", help="the newest audit records (and new ones)")
    tail.add_argument("--kind", help="only this kind, or a family (`doc` matches doc.*)")
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing new records")
    tail.add_argument("--lines", "-n", type=int, default=20, help="how many to show first")
    tail.add_argument("--json", action="store_true", help="the stored lines, as written")
    tail.add_argument("--poll", type=float, default=0.25, help=argparse.SUPPRESS)
    tail.set_defaults(func=_cmd_tail)

    verify = audit_sub.add_parser(
        "verify", help="walk the hash chain; exit 1 naming the first broken record")
    verify.set_defaults(func=_cmd_verify)

    export = audit_sub.add_parser("export", help="records from a time on, as stored (JSONL)")
    export.add_argument("--since", required=True,
                        help="2025-01-31, 2025-01-31T12:00:00Z, 12h, 7d or epoch ms")
    export.add_argument("--until", help="same forms; exclusive")
    export.add_argument("--kind", help="only this kind, or a family")
    export.add_argument("--format", choices=["jsonl"], default="jsonl")
    export.add_argument("--output", "-o", help="a file instead of stdout")
    export.set_defaults(func=_cmd_export)

    for command in audit_sub.choices.values():
        command.add_argument("--store", help="the store directory (default: audit.store_dir, "
                             "else <data_dir>/audit)")

