"""The audit store on disk: a hash chain that names the first line anyone touched."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from ragbus.actors.audit import (
    GENESIS,
    AuditStore,
    Incoming,
    StoreLockedError,
    StoreTamperedError,
    last_entries,
    read_entries,
    verify_store,
)
from ragbus.subjects import AuditEvent

DAY = 86400.0
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def incoming(n: int, start: int = 0, *, kind: str = "query.received") -> list[Incoming]:
    return [Incoming(msgspec.json.encode(AuditEvent(event_id=f"{i:032x}", kind=kind,
                                                    actor="test", time=int(T0 * 1000) + i)),
                     stream_seq=i + 1, subject=f"rag.audit.test.{kind}")
            for i in range(start, start + n)]


def open_store(path: Path, clock: Clock | None = None, **kwargs: int) -> AuditStore:
    store = AuditStore(path, clock=clock or Clock(), **kwargs)  # type: ignore[arg-type]
    store.open()
    return store


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def only_file(directory: Path) -> Path:
    [path] = sorted(directory.glob("audit-*.jsonl"))
    return path


def test_records_are_chained_from_genesis(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    result = store.append(incoming(5))
    store.close()
    assert (result.written, result.duplicates, result.rejected) == (5, 0, 0)
    records = [json.loads(line) for line in lines_of(only_file(tmp_path))]
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5]
    assert records[0]["prev"] == GENESIS
    assert all(b["prev"] == a["hash"] for a, b in itertools.pairwise(records))
    report = verify_store(tmp_path)
    assert report.ok
    assert (report.records, report.head) == (5, records[-1]["hash"])


def test_a_redelivered_batch_writes_nothing_even_after_a_restart(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.append(incoming(10))
    assert store.append(incoming(10)).duplicates == 10  # redelivered before the ack
    store.close()
    store = open_store(tmp_path)  # a new logger remembers what the old one wrote
    result = store.append(incoming(15))  # 10 old, 5 new
    store.close()
    assert (result.written, result.duplicates) == (5, 10)
    report = verify_store(tmp_path)
    assert (report.ok, report.records, report.duplicates) == (True, 15, 0)


def test_remembered_ids_are_bounded_and_reloaded_from_the_end(tmp_path: Path) -> None:
    store = open_store(tmp_path, dedupe_ids=4)
    store.append(incoming(6))
    store.close()
    store = open_store(tmp_path, dedupe_ids=4)
    assert [store.seen(f"{i:032x}") for i in range(6)] == [False, False, True, True, True,
                                                          True]
    store.close()


def test_a_message_that_is_not_an_event_is_kept_as_a_rejection(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    bad = [Incoming(b"{not json", 7, "rag.audit.query.received"),
           Incoming(b'{"kind": 3}', 8, "rag.audit.x")]
    assert store.append(bad).rejected == 2
    assert store.append(bad).duplicates == 2  # a redelivery is still recognised
    store.close()
    events = [e.event for e in read_entries(tmp_path)]
    assert [e.kind for e in events] == ["audit.rejected", "audit.rejected"]
    assert events[0].subject == "rag.audit.query.received"
    assert events[0].details["stream_seq"] == 7
    assert "not json" not in json.dumps(events[0].details)  # only a digest of the bytes


def test_files_are_daily_and_the_chain_runs_across_them(tmp_path: Path) -> None:
    clock = Clock()
    store = open_store(tmp_path, clock)
    store.append(incoming(3))
    clock.now += DAY
    store.append(incoming(2, 3))
    store.close()
    names = [p.name for p in sorted(tmp_path.glob("audit-*.jsonl"))]
    assert names == ["audit-2026-01-01.jsonl", "audit-2026-01-02.jsonl"]
    assert verify_store(tmp_path).records == 5
    # reopening on the second day appends to its file
    store = open_store(tmp_path, clock)
    store.append(incoming(1, 5))
    store.close()
    assert len(lines_of(tmp_path / names[1])) == 3
    assert verify_store(tmp_path).ok


def test_a_second_writer_is_refused(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    with pytest.raises(StoreLockedError, match="one audit-logger per store"):
        open_store(tmp_path)
    store.close()
    open_store(tmp_path).close()  # free again once closed


def test_a_torn_last_line_is_cut_on_open(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.append(incoming(3))
    store.close()
    path = only_file(tmp_path)
    with path.open("ab") as f:
        f.write(b'{"seq":4,"prev":"abc')  # a crash in the middle of a write
    assert verify_store(tmp_path).note is not None
    store = open_store(tmp_path)
    store.append(incoming(1, 3))
    store.close()
    report = verify_store(tmp_path)
    assert (report.ok, report.records, report.note) == (True, 4, None)


# -- tampering: every kind of change is found at the line it was made ----------------------
def write_store(directory: Path, n: int = 20) -> Path:
    store = open_store(directory)
    store.append(incoming(n // 2))
    store.append(incoming(n - n // 2, n // 2))
    store.close()
    return only_file(directory)


def edit_event(line: bytes) -> bytes:
    record = json.loads(line)
    record["event"]["outcome"] = "denied"
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def rehash(line: bytes) -> bytes:
    """An attacker who also recomputes the edited record's own hash."""
    from ragbus.actors.audit._record import encode_line

    record = json.loads(line)
    record["event"]["outcome"] = "denied"
    event = json.dumps(record["event"], separators=(",", ":")).encode()
    return encode_line(record["seq"], record["prev"], record["stream_seq"], event)[0]


Tamper = Callable[[list[bytes], int], list[bytes]]
TAMPERING: dict[str, tuple[Tamper, int]] = {
    # name: (change to lines at index i, 1-based line verify must name)
    "edit the event": (lambda ls, i: [*ls[:i], edit_event(ls[i]), *ls[i + 1:]], 0),
    "edit and rehash": (lambda ls, i: [*ls[:i], rehash(ls[i]), *ls[i + 1:]], 1),
    "edit whitespace only": (lambda ls, i: [*ls[:i], ls[i].replace(b'"seq":', b'"seq": '),
                                            *ls[i + 1:]], 0),
    "delete the line": (lambda ls, i: [*ls[:i], *ls[i + 1:]], 0),
    "swap with the next": (lambda ls, i: [*ls[:i], ls[i + 1], ls[i], *ls[i + 2:]], 0),
    "duplicate the line": (lambda ls, i: [*ls[:i + 1], ls[i], *ls[i + 1:]], 1),
    # a forged record with a correct hash of its own shows at the line after it
    "insert a forged line": (lambda ls, i: [*ls[:i], rehash(ls[i]), *ls[i:]], 1),
}


@pytest.mark.parametrize("index", [0, 7, 18])
@pytest.mark.parametrize("how", list(TAMPERING))
def test_verify_names_the_first_changed_line(tmp_path: Path, how: str, index: int) -> None:
    path = write_store(tmp_path)
    assert verify_store(tmp_path).ok
    change, offset = TAMPERING[how]
    path.write_bytes(b"".join(change(lines_of(path), index)))
    report = verify_store(tmp_path)
    assert not report.ok
    assert report.problem is not None
    assert report.problem.file == path.name
    # a rehashed edit only shows where the next record no longer links to it
    assert report.problem.line == index + 1 + offset, str(report.problem)
    assert report.records == index + offset


def test_cutting_lines_from_the_end_is_found_through_head(tmp_path: Path) -> None:
    path = write_store(tmp_path)
    lines = lines_of(path)
    path.write_bytes(b"".join(lines[:-3]))
    report = verify_store(tmp_path)
    assert report.problem is not None
    assert (report.problem.file, report.problem.line, report.problem.seq) == (path.name, 18, 18)
    assert "removed from the end" in report.problem.reason


def test_rewriting_the_whole_tail_is_found_through_head(tmp_path: Path) -> None:
    from ragbus.actors.audit._record import encode_line

    path = write_store(tmp_path)
    lines = lines_of(path)
    forged, prev = [], json.loads(lines[14])["hash"]
    for line in lines[15:]:  # recompute every hash from line 16 on
        record = json.loads(line)
        record["event"]["actor"] = "someone-else"
        event = json.dumps(record["event"], separators=(",", ":")).encode()
        new, prev = encode_line(record["seq"], prev, record["stream_seq"], event)
        forged.append(new)
    path.write_bytes(b"".join(lines[:15] + forged))
    report = verify_store(tmp_path)
    assert report.problem is not None
    assert report.problem.line == 20  # the last record no longer matches HEAD
    assert "HEAD" in report.problem.reason


def test_removing_a_whole_day_breaks_the_next_day(tmp_path: Path) -> None:
    clock = Clock()
    store = open_store(tmp_path, clock)
    for day in range(3):
        store.append(incoming(2, day * 2))
        clock.now += DAY
    store.close()
    (tmp_path / "audit-2026-01-02.jsonl").unlink()
    report = verify_store(tmp_path)
    assert report.problem is not None
    assert (report.problem.file, report.problem.line, report.problem.seq) == (
        "audit-2026-01-03.jsonl", 1, 5)


def test_a_tampered_end_keeps_the_logger_from_extending_it(tmp_path: Path) -> None:
    path = write_store(tmp_path)
    lines = lines_of(path)
    path.write_bytes(b"".join([*lines[:-1], edit_event(lines[-1])]))
    with pytest.raises(StoreTamperedError, match="ragbus audit verify"):
        open_store(tmp_path)
    path.write_bytes(b"".join(lines[:-2]))  # cut from the end instead
    with pytest.raises(StoreTamperedError, match="removed from the end"):
        open_store(tmp_path)
    path.write_bytes(b"".join([*lines[:-1], rehash(lines[-1])]))  # a consistent forgery
    with pytest.raises(StoreTamperedError, match="rewritten"):
        open_store(tmp_path)


def test_a_restored_chain_takes_over_and_the_stores_own_records_follow_it(
        tmp_path: Path) -> None:
    """A restore into a fresh system: the backup's chain becomes the store's, the
    records the fresh store had are appended after it (the backup's own events are not
    written twice), and the replaced files are kept."""
    backup = open_store(tmp_path / "old")
    backup.append(incoming(5))
    backup.copy_files(tmp_path / "copy")
    backup.close()
    fresh = open_store(tmp_path / "store")
    fresh.append(incoming(2, start=100) + incoming(1, start=4))  # event 4 is in the backup
    assert fresh.replace_with(tmp_path / "copy") == 7
    fresh.append(incoming(1, start=200))
    fresh.close()
    report = verify_store(tmp_path / "store")
    assert report.problem is None
    assert report.records == 8
    ids = [e.event.event_id for e in read_entries(tmp_path / "store")]
    assert ids == [f"{i:032x}" for i in (0, 1, 2, 3, 4, 100, 101, 200)]
    [kept] = [p for p in (tmp_path / "store").iterdir() if p.name.startswith("replaced-")]
    assert verify_store(kept).records == 3


def test_a_restored_chain_that_does_not_check_out_leaves_the_store_as_it_was(
        tmp_path: Path) -> None:
    write_store(tmp_path / "copy")
    (tmp_path / "copy" / ".lock").unlink()  # a backup holds the files and HEAD only
    path = only_file(tmp_path / "copy")
    lines = lines_of(path)
    path.write_bytes(b"".join([*lines[:-1], edit_event(lines[-1])]))
    store = open_store(tmp_path / "store")
    store.append(incoming(3, start=50))
    with pytest.raises(StoreTamperedError):
        store.replace_with(tmp_path / "copy")
    store.append(incoming(1, start=60))
    store.close()
    report = verify_store(tmp_path / "store")
    assert report.problem is None
    assert report.records == 4
    assert not [p for p in (tmp_path / "store").iterdir() if p.name.startswith("replaced-")]


def test_reading_filters_by_time_and_kind(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.append(incoming(5, kind="doc.deleted") + incoming(5, 5, kind="doc.purged")
                 + incoming(5, 10, kind="query.received"))
    store.close()
    since = int(T0 * 1000) + 3
    assert [e.seq for e in read_entries(tmp_path, since_ms=since, until_ms=since + 5)] == [
        4, 5, 6, 7, 8]
    assert len(list(read_entries(tmp_path, kind="doc"))) == 10
    assert len(list(read_entries(tmp_path, kind="doc.purged"))) == 5
    assert [e.seq for e in last_entries(tmp_path, 3, kind="doc")] == [8, 9, 10]
