"""``ragbus audit tail|verify|export``, run as a person would run them."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import msgspec
import pytest

from ragbus.actors.audit import AuditStore, Incoming
from ragbus.runtime.cli import main
from ragbus.subjects import AuditEvent
from tests.support.cli import RAGBUS

REPO = Path(__file__).resolve().parents[3]
T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def event(i: int, kind: str, at_ms: int) -> Incoming:
    e = AuditEvent(event_id=f"{i:032x}", kind=kind, actor="ingestor", subject=f"doc-{i}",
                   time=at_ms, duration_ms=2.5, sizes={"chunks": i})
    return Incoming(msgspec.json.encode(e), stream_seq=i + 1, subject=f"rag.audit.test.{kind}")


def fill(store: Path, items: list[Incoming]) -> None:
    s = AuditStore(store)
    s.open()
    try:
        s.append(items)
    finally:
        s.close()


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "audit"
    hour = 3_600_000
    fill(path, [event(i, kind, T0_MS + i * hour) for i, kind in enumerate(
        ["ingest.job", "doc.deleted", "doc.purged", "ingest.job", "doc.deleted"])])
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["audit", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_tail_shows_the_newest_records_of_a_kind(store: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "tail", "--store", str(store), "-n", "2")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("2026-01-01T03:00:00.000Z #4 ingest.job ok actor=ingestor")
    assert "subject=doc-4" in lines[1]
    assert "2.5ms" in lines[1]
    _, out, _ = run(capsys, "tail", "--store", str(store), "--kind", "doc")
    assert [line.split()[2] for line in out.splitlines()] == [
        "doc.deleted", "doc.purged", "doc.deleted"]


def test_tail_json_prints_the_stored_lines(store: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "tail", "--store", str(store), "--json", "-n", "1")
    [stored] = sorted(store.glob("audit-*.jsonl"))
    assert out.encode() == stored.read_bytes().splitlines(keepends=True)[-1]


def test_verify_says_ok_or_names_the_broken_record(store: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "verify", "--store", str(store))
    assert code == 0
    assert "ok: 5 records in 1 files" in out
    [path] = sorted(store.glob("audit-*.jsonl"))
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join([*lines[:2], lines[2].replace(b"doc-2", b"doc-9"), *lines[3:]]))
    code, _, err = run(capsys, "verify", "--store", str(store))
    assert code == 1
    assert f"{path.name} line 3 (seq 3): its hash does not match its content" in err


def test_verify_refuses_a_store_that_is_not_there(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "verify", "--store", str(tmp_path / "typo"))
    assert code == 2
    assert "no audit store at" in err
    assert "ok" not in out


def test_export_since_writes_records_as_stored(store: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "export.jsonl"
    code, _, err = run(capsys, "export", "--since", "2026-01-01T02:00:00Z", "--format", "jsonl",
                       "--store", str(store), "--output", str(target))
    assert code == 0
    assert "exported 3 records" in err
    records = [json.loads(line) for line in target.read_text().splitlines()]
    assert [r["seq"] for r in records] == [3, 4, 5]
    assert records[0]["event"]["kind"] == "doc.purged"
    _, out, _ = run(capsys, "export", "--since", "2026-01-01", "--until", "2026-01-01T01:30:00Z",
                    "--kind", "doc", "--store", str(store))
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [2]


def test_export_refuses_a_time_it_cannot_read(store: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "export", "--since", "last tuesday", "--store", str(store))
    assert code == 2
    assert "use 2025-01-31" in err


def test_tail_follow_prints_records_as_they_are_written(store: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [*RAGBUS, "audit", "tail", "--follow", "--kind", "doc",
         "--json", "-n", "1", "--poll", "0.05", "--store", str(store)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["seq"] == 5  # the newest doc.* record, then only new ones
        time.sleep(0.3)
        fill(store, [event(10, "ingest.job", T0_MS), event(11, "doc.purged", T0_MS)])
        following = json.loads(proc.stdout.readline())
        assert (following["seq"], following["event"]["kind"]) == (7, "doc.purged")
    finally:
        proc.kill()
        proc.wait(timeout=10)
