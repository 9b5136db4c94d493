"""The append-only store: one writer, a hash chain, fsync per batch, no duplicates.

Delivery from the stream is at-least-once: a batch written but not yet
acknowledged when the logger dies comes again. The store remembers the event
ids of its last ``dedupe_ids`` records (reloaded from disk on open), so the
second delivery writes nothing: records are exactly once.

Opening checks the end of the chain (links, hashes, HEAD) before appending to
it; a damaged end refuses to open, because extending it would bury the damage.
All methods block (file I/O, fsync): the actor calls them on a worker thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec

from ragbus.subjects import AuditEvent, AuditKind, AuditOutcome, ErrorCode

from ._errors import AuditStoreError, StoreLockedError, StoreTamperedError
from ._files import (
    HEAD_FILE,
    Head,
    file_name,
    read_head,
    reverse_lines,
    store_files,
    truncate_torn_tail,
    write_head,
)
from ._record import GENESIS, Record, chain_hash, decode_line, encode_line, stored_event_id

__all__ = ("AppendResult", "AuditStore", "Check", "Incoming")

LOGGER = "audit-logger"
_event_decoder = msgspec.json.Decoder(AuditEvent)
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Incoming:
    """A message from the stream: its bytes, stream sequence and subject."""

    data: bytes
    stream_seq: int
    subject: str


#: Why an event may not be kept as sent (its subject says another publisher), or None.
Check = Callable[[Incoming, AuditEvent], str | None]


@dataclass(frozen=True, slots=True)
class AppendResult:
    written: int
    duplicates: int
    rejected: int


class _RecentIds:
    """The last ``capacity`` event ids, oldest forgotten first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: dict[str, None] = {}

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, event_id: str) -> None:
        self._ids[event_id] = None
        while len(self._ids) > self.capacity:
            del self._ids[next(iter(self._ids))]


class AuditStore:
    def __init__(self, directory: Path, *, fsync: bool = True, dedupe_ids: int = 200_000,
                 clock: Callable[[], float] = time.time, check: Check | None = None) -> None:
        self.directory = directory
        self.fsync = fsync
        self._check = check
        self._clock = clock
        self._ids = _RecentIds(dedupe_ids)
        self.seq = 0
        self.head = GENESIS
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._file = ""
        self._lines = 0  # complete lines in the current file

    # -- opening ----------------------------------------------------------------------
    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self._recover()
        except BaseException:
            self.close()
            raise

    def _lock(self) -> None:
        path = self.directory / ".lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StoreLockedError(
                f"another audit-logger (pid {holder}) is writing {self.directory}: run one "
                "audit-logger per store, or give this one its own audit.store_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def _recover(self) -> None:
        """Check the chain's last ``dedupe_ids`` records, newest first, and remember their ids."""
        files = store_files(self.directory)
        if files:
            truncate_torn_tail(files[-1])
        ids: list[str] = []
        newer: tuple[str, int, str] | None = None  # (file, seq, prev) of the record after
        for path in reversed(files):
            for line in reverse_lines(path):
                try:
                    record = decode_line(line)
                except msgspec.DecodeError:
                    raise self._tampered(path.name, "a line is not a valid record") from None
                event = bytes(record.event)
                if chain_hash(record.seq, record.prev, record.stream_seq, event) != record.hash:
                    raise self._tampered(path.name, f"record {record.seq} does not match its hash")
                if newer is None:
                    self.seq, self.head = record.seq, record.hash
                elif newer[1] != record.seq + 1 or newer[2] != record.hash:
                    raise self._tampered(newer[0], f"record {newer[1]} does not follow record "
                                         f"{record.seq}")
                try:
                    ids.append(stored_event_id(event))
                except msgspec.DecodeError:
                    raise self._tampered(path.name, f"record {record.seq} holds no valid event") \
                        from None
                newer = (path.name, record.seq, record.prev)
                if len(ids) >= self._ids.capacity:
                    break
            if len(ids) >= self._ids.capacity:
                break
        for event_id in reversed(ids):  # oldest first, so the oldest are forgotten first
            self._ids.add(event_id)
        head = read_head(self.directory)
        if head is not None and head.seq > self.seq:
            raise self._tampered(
                head.file, f"HEAD says the chain ends at seq {head.seq} but the files end at "
                f"seq {self.seq}: records were removed from the end")
        if head is not None and head.seq == self.seq and head.hash != self.head:
            raise self._tampered(head.file, f"record {self.seq} is not the one HEAD recorded: "
                                 "the chain was rewritten")
        if files:
            self._open_file(files[-1].name)

    def _tampered(self, name: str, what: str) -> StoreTamperedError:
        return StoreTamperedError(
            f"the audit store {self.directory} is damaged near {name}: {what}. Run `ragbus "
            "audit verify` to find the first broken record, move the store aside as evidence, "
            "and start again (a new chain begins; the stream still holds recent events)"
        )

    def _open_file(self, name: str) -> None:
        if self._fd is not None:
            os.close(self._fd)
        path = self.directory / name
        created = not path.exists()
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._file = name
        if created:
            self._lines = 0
            if self.fsync:  # the new name must survive a crash as well as its contents
                dir_fd = os.open(self.directory, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        else:
            with path.open("rb") as f:
                self._lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20),
                                                                        b""))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- backup and restore ------------------------------------------------------------
    def copy_files(self, target: Path) -> int:
        """Copy the store's files and HEAD to ``target``; returns the last record's seq.

        Call it where appends run (the same thread): between two batches the files
        and HEAD agree, so the copy is a whole chain.
        """
        target.mkdir(parents=True, exist_ok=True)
        for path in store_files(self.directory):
            shutil.copy2(path, target / path.name)
        if (self.directory / HEAD_FILE).exists():
            shutil.copy2(self.directory / HEAD_FILE, target / HEAD_FILE)
        return self.seq

    def replace_with(self, source: Path) -> int:
        """Make the chain in ``source`` (a restored backup's files and HEAD) this store's,
        then append this store's own records to it; returns the new chain's last seq.

        A freshly started system has records already (its actors' start-up events),
        so they are not refused but carried over: appended after the restored chain
        as new records (an event the backup holds already is not written twice), and
        the replaced files are kept as they were in ``replaced-<time>/`` in the store
        directory. The restored chain's end is checked as on every open; if it does not
        check out, the store is put back as it was.
        """
        if self._lock_fd is None:
            raise AuditStoreError("the audit store is not open: call open() first")
        names = sorted(p.name for p in source.iterdir())
        strays = [n for n in names if n != HEAD_FILE and not _is_store_file(source / n)]
        if strays:
            raise AuditStoreError(f"the backup's audit files include {', '.join(strays)}, "
                                  "which are no audit store files")
        current = [*store_files(self.directory)]
        carried = [Incoming(bytes(record.event), record.stream_seq, "")
                   for path in current for record in _records(path)]
        if (self.directory / HEAD_FILE).exists():
            current.append(self.directory / HEAD_FILE)
        aside = self.directory / f"replaced-{int(self._clock() * 1000)}"
        self._reset()
        aside.mkdir()
        for path in current:
            path.rename(aside / path.name)
        for name in sorted(names, key=lambda n: n == HEAD_FILE):  # HEAD last
            (source / name).rename(self.directory / name)
        try:
            self.open()
        except BaseException:
            self._reset()
            for name in names:
                (self.directory / name).unlink(missing_ok=True)
            for path in aside.iterdir():
                path.rename(self.directory / path.name)
            aside.rmdir()
            self.open()
            raise
        if not current:
            aside.rmdir()
        # checked when they were first written; their subjects are not in the records
        check, self._check = self._check, None
        try:
            self.append(carried)
        finally:
            self._check = check
        return self.seq

    def _reset(self) -> None:
        """Close, and forget what was read from the files (an open reads it again)."""
        self.close()
        self._ids = _RecentIds(self._ids.capacity)
        self.seq, self.head, self._file, self._lines = 0, GENESIS, "", 0

    # -- appending --------------------------------------------------------------------
    def seen(self, event_id: str) -> bool:
        return event_id in self._ids

    def append(self, batch: Sequence[Incoming]) -> AppendResult:
        """Write the batch's new events, fsync, and only then move the chain's end."""
        if self._lock_fd is None:
            raise AuditStoreError("the audit store is not open: call open() first")
        seq, head = self.seq, self.head
        lines: list[bytes] = []
        fresh: dict[str, None] = {}
        duplicates = rejected = 0
        for item in batch:
            try:
                event = _event_decoder.decode(item.data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                event = _rejected(item, str(exc))
                rejected += 1
            else:
                why = self._check(item, event) if self._check is not None else None
                if why is not None:
                    event = _rejected(item, why, claimed=event)
                    rejected += 1
            if event.event_id in self._ids or event.event_id in fresh:
                duplicates += 1
                continue
            seq += 1
            line, head = encode_line(seq, head, item.stream_seq, _encoder.encode(event))
            lines.append(line)
            fresh[event.event_id] = None
        if not lines:
            return AppendResult(0, duplicates, rejected)
        name = file_name(self._clock())
        if name != self._file:
            self._open_file(name)
        assert self._fd is not None
        self._write_all(b"".join(lines))
        self.seq, self.head = seq, head
        self._lines += len(lines)
        for event_id in fresh:
            self._ids.add(event_id)
        write_head(self.directory, Head(seq=seq, hash=head, file=self._file, line=self._lines))
        return AppendResult(len(lines), duplicates, rejected)

    def _write_all(self, data: bytes) -> None:
        assert self._fd is not None
        fd = self._fd
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            # leave no half batch behind: it was not acknowledged and will come again
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise


def _records(path: Path) -> list[Record]:
    return [decode_line(line) for line in path.read_bytes().splitlines() if line]


def _is_store_file(path: Path) -> bool:
    return path.is_file() and path in store_files(path.parent)


def _rejected(item: Incoming, error: str, *, claimed: AuditEvent | None = None) -> AuditEvent:
    """What is kept of a message that is not an audit event, or of an event its subject
    does not vouch for (``claimed``): where, how big, its digest, and why. The message
    itself is not kept: a forged event stored as sent would be believed.

    Its id comes from the stream sequence, so a redelivery is still a duplicate.
    """
    event_id = hashlib.sha256(b"rejected:%d" % item.stream_seq).hexdigest()[:32]
    details: dict[str, object] = {"error": error[:300],
                                  "sha256": hashlib.sha256(item.data).hexdigest(),
                                  "stream_seq": item.stream_seq}
    if claimed is not None:
        details.update(claimed_actor=claimed.actor[:100], claimed_kind=claimed.kind[:100],
                       claimed_event_id=claimed.event_id[:64])
    return AuditEvent(
        event_id=event_id,
        kind=AuditKind.AUDIT_REJECTED,
        actor=LOGGER,
        subject=item.subject,
        outcome=AuditOutcome.FAILED,
        code=(ErrorCode.FORBIDDEN if claimed is not None else ErrorCode.BAD_REQUEST).value,
        sizes={"bytes": len(item.data)},
        details=details,
    )
