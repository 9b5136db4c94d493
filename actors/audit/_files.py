"""The store on disk: daily append-only JSONL files and a HEAD note of the chain's end.

A file is named after the UTC day its records were written (``audit-2025-01-31.jsonl``),
so names sort in time order and a day once over is never written again. ``HEAD``
names the last record written: without it, removing lines from the very end
would leave a shorter but valid chain.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import msgspec

from ragbus.config import Settings

__all__ = (
    "Head",
    "file_name",
    "read_head",
    "reverse_lines",
    "store_dir",
    "store_files",
    "truncate_torn_tail",
    "write_head",
)

_NAME = re.compile(r"^audit-\d{4}-\d{2}-\d{2}\.jsonl$")
HEAD_FILE = "HEAD"


class Head(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    hash: str
    file: str
    line: int


def store_dir(settings: Settings) -> Path:
    """``audit.store_dir``, else ``<data_dir>/audit``."""
    configured = settings.audit.store_dir
    return Path(configured) if configured else settings.data_root / "audit"


def file_name(when_s: float) -> str:
    return datetime.fromtimestamp(when_s, UTC).strftime("audit-%Y-%m-%d.jsonl")


def store_files(directory: Path) -> list[Path]:
    """The store's files, oldest first (anything else in the directory is ignored)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _NAME.match(p.name) and p.is_file())


def read_head(directory: Path) -> Head | None:
    try:
        head: Head = msgspec.json.decode((directory / HEAD_FILE).read_bytes(), type=Head)
    except FileNotFoundError:
        return None
    except (OSError, msgspec.DecodeError):
        # an unreadable HEAD is itself a sign of tampering: say the chain has no known end
        return Head(seq=-1, hash="", file=HEAD_FILE, line=0)
    return head


def write_head(directory: Path, head: Head) -> None:
    """Replace HEAD atomically. Not fsynced: after a power loss it may lag, never lead."""
    tmp = directory / (HEAD_FILE + ".tmp")
    tmp.write_bytes(msgspec.json.encode(head))
    tmp.replace(directory / HEAD_FILE)


def truncate_torn_tail(path: Path) -> int:
    """Cut a last line without its newline (a write cut short); returns the bytes removed.

    Such a line belongs to a batch that was never acknowledged, so it will be
    delivered again.
    """
    with path.open("rb+") as f:
        size = f.seek(0, os.SEEK_END)
        keep = _complete_end(f, size)
        if keep == size:
            return 0
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
        return size - keep


def _reverse_chunks(f: BinaryIO, end: int, block: int = 1 << 20) -> Iterator[bytes]:
    position = end
    while position > 0:
        start = max(0, position - block)
        f.seek(start)
        yield f.read(position - start)
        position = start


def _complete_end(f: BinaryIO, size: int) -> int:
    """The offset just past the last newline (0 if there is none)."""
    position = size
    for chunk in _reverse_chunks(f, size):
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            return position - len(chunk) + cut + 1
        position -= len(chunk)
    return 0


def reverse_lines(path: Path, block: int = 1 << 20) -> Iterator[bytes]:
    """Complete lines of ``path`` (without newlines), last first, reading from the end.

    A final fragment without a newline is skipped: it is a write in progress.
    """
    with path.open("rb") as f:
        end = _complete_end(f, f.seek(0, os.SEEK_END))
        rest = b""
        for chunk in _reverse_chunks(f, end, block):
            parts = (chunk + rest).split(b"\n")
            rest = parts[0]
            for line in reversed(parts[1:]):
                if line:
                    yield line
        if rest:
            yield rest
