"""``ragbus session list|show|export|delete`` as a process, against the real actors.

The turns are real: the router (extractive provider) answers ``Generate`` requests
with a session id and hands each finished turn to the context-trimmer's memory; the
audit-logger keeps the ``session.deleted`` event in its store.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import anyio
import msgspec

from ragbus.actors.audit import AuditLogger, read_entries
from ragbus.actors.router import Router
from ragbus.actors.trimmer import ContextTrimmer
from ragbus.actors.trimmer._memory import MemoryStore, SessionMemory, memory_key
from ragbus.config import AuditSettings, Settings
from ragbus.runtime.connection import NATS
from ragbus.subjects import AuditEvent, Done, SessionInfo, Subjects
from tests.actors.router._fixtures import ask, extractive, generate, with_router
from tests.support import running
from tests.support.cli import RAGBUS

S = Subjects()


def cli(nats_url: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAGBUS_NATS__URL": nats_url, "COLUMNS": "250"}
    return subprocess.run([*RAGBUS, "session", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60, check=False)


async def turns_kept(nc: NATS, session_id: str, n: int) -> None:
    """Wait until the trimmer has stored ``n`` turns (TurnDone is fire-and-forget)."""
    store = MemoryStore(await nc.jetstream().key_value(S.bucket("memory")))
    with anyio.fail_after(15):
        while True:
            memory, _ = await store.get(session_id)
            if memory is not None and len(memory.turns) == n:
                return
            await anyio.sleep(0.05)


def deleted_events(store: Path) -> list[AuditEvent]:
    return [e.event for e in read_entries(store) if e.event.kind == "session.deleted"]


async def test_session_list_show_export_and_delete(settings: Settings, nats_url: str,
                                                   nc: NATS, tmp_path: Path) -> None:
    store = tmp_path / "audit"
    s = msgspec.structs.replace(with_router(settings, [extractive()]),
                                audit=AuditSettings(store_dir=str(store)))
    ours, other = "web:alice-1", "web:bob-2"
    async with running(AuditLogger(s), ContextTrimmer(s), Router(s)):
        questions = ["How many vacation days do new employees get?",
                     "Do unused vacation days carry over?"]
        dones = []
        for question in questions:
            events = await ask(nc, generate(nc, question=question, session_id=ours), timeout=10)
            assert isinstance(events[-1], Done), events[-1]
            dones.append(events[-1])
        await ask(nc, generate(nc, session_id=other), timeout=10)
        await turns_kept(nc, ours, 2)
        await turns_kept(nc, other, 1)

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return cli(nats_url, tmp_path, *args)

        listed = await anyio.to_thread.run_sync(run, "list")
        assert listed.returncode == 0, listed.stderr
        assert "2 sessions with memory" in listed.stdout
        rows = {line.split("│")[1].strip(): line.split("│")[2].strip()
                for line in listed.stdout.splitlines() if line.count("│") > 3
                and line.split("│")[1].strip() in (ours, other)}
        assert rows == {ours: "2", other: "1"}

        shown = await anyio.to_thread.run_sync(run, "show", ours)
        assert shown.returncode == 0, shown.stderr
        assert "2 turns kept" in shown.stdout
        assert all(d.request_id in shown.stdout for d in dones)

        out = tmp_path / "alice.json"
        exported = await anyio.to_thread.run_sync(run, "export", ours, "--out", str(out))
        assert exported.returncode == 0, exported.stderr
        info = msgspec.json.decode(out.read_bytes(), type=SessionInfo)
        assert info.session_id == ours
        assert [t.question for t in info.turns] == questions
        assert [t.request_id for t in info.turns] == [d.request_id for d in dones]
        assert all(t.answer for t in info.turns)
        assert info.expires_at is not None
        assert info.expires_at > info.updated_at
        to_stdout = await anyio.to_thread.run_sync(run, "export", ours)
        assert json.loads(to_stdout.stdout)["session_id"] == ours

        gone = await anyio.to_thread.run_sync(run, "delete", ours)
        assert gone.returncode == 0, gone.stderr
        assert "memory deleted (2 turns" in gone.stdout
        assert "audit events are immutable" in gone.stdout

        # gone, not hidden: the stream holds the other session's entry and, for ours, a
        # tombstone with nothing of the session in it (no earlier revision is kept)
        js = nc.jetstream()
        stream = f"KV_{S.bucket('memory')}"
        marker = await js.get_last_msg(stream, f"$KV.{S.bucket('memory')}.{memory_key(ours)}")
        tomb = msgspec.json.decode(marker.data, type=SessionMemory)
        assert tomb.deleted_at is not None
        assert (tomb.session_id, tomb.turns, tomb.brief, tomb.seen) == ("", [], None, [])
        assert (await js.stream_info(stream)).state.messages == 2

        after = await anyio.to_thread.run_sync(run, "show", ours)
        assert after.returncode == 1
        assert "NOT_FOUND" in after.stderr
        again = await anyio.to_thread.run_sync(run, "delete", ours)
        assert again.returncode == 0
        assert "nothing to delete" in again.stdout
        # the other session is untouched
        kept = await anyio.to_thread.run_sync(run, "export", other)
        assert json.loads(kept.stdout)["session_id"] == other
        bad = await anyio.to_thread.run_sync(run, "show", "")
        assert bad.returncode == 1
        assert "BAD_REQUEST" in bad.stderr

        with anyio.fail_after(15):  # the store is on disk: there is no event to wait on
            while True:
                if len(deleted_events(store)) == 2:
                    break
                await anyio.sleep(0.05)
    first, second = deleted_events(store)
    assert (first.actor, first.session) == ("context-trimmer", ours)
    assert first.details == {"existed": True}
    assert first.sizes["turns"] == 2
    assert second.details == {"existed": False}
    # the answers' own audit events are still there: deleting memory does not touch them
    answered = {e.event.request_id for e in read_entries(store)
                if e.event.kind == "answer.done"}
    assert {d.request_id for d in dones} <= answered


async def test_nothing_serving_sessions_is_unavailable_at_once(nats_url: str,
                                                              tmp_path: Path) -> None:
    done = await anyio.to_thread.run_sync(lambda: cli(nats_url, tmp_path, "show", "x"))
    assert done.returncode == 1
    assert "UNAVAILABLE" in done.stderr
    assert "session.get" in done.stderr
