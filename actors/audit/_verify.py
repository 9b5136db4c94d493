"""Walking the whole chain: the first record that does not check out, and why.

Each line must decode, be in canonical form, carry the next sequence number,
link to the hash of the line before, and match its own hash; the end must reach
what HEAD recorded. So an edited line fails at itself, a removed or moved one
fails where the gap or the swap is, and lines cut from the end fail at the
first missing line HEAD vouches for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import msgspec

from ._files import Head, read_head, store_files
from ._record import GENESIS, chain_hash, decode_line, encode_line, stored_event_id

__all__ = ("Problem", "VerifyReport", "verify_store")


@dataclass(frozen=True, slots=True)
class Problem:
    """Where the chain first breaks: file name, 1-based line, the seq there, and why."""

    file: str
    line: int
    seq: int | None
    reason: str

    def __str__(self) -> str:
        seq = f" (seq {self.seq})" if self.seq is not None else ""
        return f"{self.file} line {self.line}{seq}: {self.reason}"


@dataclass(frozen=True, slots=True)
class VerifyReport:
    records: int
    files: int
    head: str
    duplicates: int
    problem: Problem | None = None
    note: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


class _Walk:
    """The chain's state while walking it: what the next line must look like."""

    def __init__(self, head: Head | None) -> None:
        self.head = head
        self.expected = 1
        self.prev = GENESIS
        self.seen: set[str] = set()
        self.duplicates = 0
        self.last_file = ""
        self.last_line = 0

    def line(self, name: str, number: int, line: bytes) -> Problem | None:
        def broken(seq: int | None, reason: str) -> Problem:
            return Problem(name, number, seq, reason)

        try:
            record = decode_line(line)
        except msgspec.DecodeError:
            return broken(None, "not a valid audit record: the line was edited")
        event = bytes(record.event)
        if record.seq != self.expected:
            how = ("records before it were removed or it was moved"
                   if record.seq > self.expected else "it was copied or moved")
            return broken(record.seq, f"seq {self.expected} expected here: {how}")
        if record.prev != self.prev:
            return broken(record.seq, "it does not link to the record before it: a record "
                          "was removed, inserted or moved")
        if chain_hash(record.seq, record.prev, record.stream_seq, event) != record.hash:
            return broken(record.seq, "its hash does not match its content: the record was "
                          "edited")
        if encode_line(record.seq, record.prev, record.stream_seq, event)[0] != line + b"\n":
            return broken(record.seq, "the line is not as written (changed outside the event)")
        if self.head is not None and record.seq == self.head.seq and \
                record.hash != self.head.hash:
            return broken(record.seq, "it differs from what HEAD recorded: the chain was "
                          "rewritten from here or earlier")
        try:
            found = stored_event_id(event)
        except msgspec.DecodeError:
            return broken(record.seq, "it holds no valid audit event")
        if found in self.seen:
            self.duplicates += 1
        self.seen.add(found)
        self.expected, self.prev = record.seq + 1, record.hash
        self.last_file, self.last_line = name, number
        return None

    def end(self) -> Problem | None:
        head = self.head
        if head is None or head.seq < self.expected:
            return None
        if head.seq < 0:
            return Problem(head.file, 0, None, "HEAD is unreadable: it was edited")
        line = self.last_line + 1 if head.file == self.last_file else 1
        return Problem(head.file, line, self.expected,
                       f"missing: HEAD records seq {head.seq} as written but the store ends at "
                       f"seq {self.expected - 1}: records were removed from the end")


def verify_store(directory: Path) -> VerifyReport:
    walk = _Walk(read_head(directory))  # HEAD first: records written meanwhile are fine
    files = store_files(directory)
    note: str | None = None
    problem: Problem | None = None
    for index, path in enumerate(files):
        newest = index == len(files) - 1
        with path.open("rb") as f:
            for number, raw in enumerate(f, start=1):
                if not raw.endswith(b"\n"):
                    if newest:
                        note = f"{path.name} ends in an incomplete line (a write in progress)"
                    else:
                        problem = Problem(path.name, number, None, "the file does not end with "
                                          "a newline but later files exist: it was cut or edited")
                    break
                problem = walk.line(path.name, number, raw[:-1])
                if problem is not None:
                    break
        if problem is not None:
            break
    if problem is None:
        problem = walk.end()
    return VerifyReport(records=walk.expected - 1, files=len(files), head=walk.prev,
                        duplicates=walk.duplicates, problem=problem, note=note)
