"""Reading the store for people and exports: filtered, newest last, following new lines."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec

from ragbus.subjects import AuditEvent

from ._files import reverse_lines, store_files
from ._record import decode_line

__all__ = ("Entry", "follow", "kind_matches", "last_entries", "parse_time", "read_entries")

_event_decoder = msgspec.json.Decoder(AuditEvent)
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True, slots=True)
class Entry:
    """A stored line (exactly as written, without its newline), its seq and event."""

    line: bytes
    seq: int
    event: AuditEvent


def kind_matches(kind: str, pattern: str | None) -> bool:
    """``doc`` matches ``doc.deleted`` and ``doc.purged``; ``doc.deleted`` only itself."""
    return pattern is None or kind == pattern or kind.startswith(pattern + ".")


def parse_time(text: str, now_s: float | None = None) -> int:
    """Epoch ms from ``2025-01-31``, ``2025-01-31T12:00:00Z``, ``90m``/``12h``/``7d`` ago,
    or epoch milliseconds."""
    text = text.strip()
    now = time.time() if now_s is None else now_s
    relative = _RELATIVE.match(text)
    if relative:
        return int((now - float(relative[1]) * _UNITS[relative[2]]) * 1000)
    if text.isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"cannot read {text!r} as a time: use 2025-01-31, 2025-01-31T12:00:00Z, "
            "a span ago such as 90m, 12h or 7d, or epoch milliseconds") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _entry(line: bytes) -> Entry | None:
    try:
        record = decode_line(line)
        return Entry(line, record.seq, _event_decoder.decode(bytes(record.event)))
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None  # `verify` is the place that reports damage; reading skips it


def read_entries(directory: Path, *, since_ms: int | None = None, until_ms: int | None = None,
                 kind: str | None = None) -> Iterator[Entry]:
    """Entries in store order whose event time is in [since, until) and kind matches."""
    floor = None
    if since_ms is not None:
        # files are named by the day written; events are never written before they happen
        floor = (datetime.fromtimestamp(since_ms / 1000, UTC) - timedelta(days=1)).strftime(
            "audit-%Y-%m-%d.jsonl")
    for path in store_files(directory):
        if floor is not None and path.name < floor:
            continue
        with path.open("rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    break
                entry = _entry(raw[:-1])
                if entry is None or not kind_matches(entry.event.kind, kind):
                    continue
                t = entry.event.time
                if (since_ms is None or t >= since_ms) and (until_ms is None or t < until_ms):
                    yield entry


def last_entries(directory: Path, count: int, *, kind: str | None = None) -> list[Entry]:
    """The newest ``count`` matching entries, oldest first, read from the end."""
    found: list[Entry] = []
    for path in reversed(store_files(directory)):
        for line in reverse_lines(path):
            entry = _entry(line)
            if entry is not None and kind_matches(entry.event.kind, kind):
                found.append(entry)
                if len(found) >= count:
                    return found[::-1]
    return found[::-1]


def follow(directory: Path, *, kind: str | None = None, after_seq: int = 0,
           poll_s: float = 0.25, keep_going: Callable[[], bool] = lambda: True
           ) -> Iterator[Entry]:
    """Entries with seq above ``after_seq`` as they are written, across day changes."""
    files = store_files(directory)
    path: Path | None = files[-1] if files else None
    offset, pending = 0, b""
    while keep_going():
        if path is None:
            files = store_files(directory)
            if not files:
                time.sleep(poll_s)
                continue
            path = files[0]
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
        offset += len(data)
        *complete, pending = (pending + data).split(b"\n")
        for line in complete:
            entry = _entry(line)
            if entry is not None and entry.seq > after_seq and kind_matches(entry.event.kind,
                                                                              kind):
                yield entry
        if data:
            continue
        newer = [p for p in store_files(directory) if p.name > path.name]
        if newer:
            # the writer moved on; one more read above caught anything it wrote before that
            with path.open("rb") as f:
                if f.seek(0, 2) == offset:
                    path, offset, pending = newer[0], 0, b""
                    continue
        time.sleep(poll_s)
