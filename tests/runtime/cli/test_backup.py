"""``ragbus backup|backup verify|restore``, run as a person would run them: two systems
(`ragbus up` processes, each on its own data directory and nats-server), the real model
and the real Qdrant engine. Back up the first, restore into the second, ask both."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import nats

from ragbus.runtime import Client
from ragbus.subjects import Query, Sources, Subjects, new_id
from tests.support.cli import RAGBUS, read_until

QUESTION = "Why do sea otters hold hands?"
DOCS = {
    "otters.txt": "Sea otters hold hands while sleeping so they do not drift apart. "
                  "A group of resting otters is called a raft.\n",
    "beavers.txt": "Beavers build dams of branches and mud to make ponds where they "
                   "are safe from predators.\n",
}


class System:
    """One ``ragbus up`` on its own data directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAGBUS_")},
                    "XDG_DATA_HOME": str(root), "RAGBUS_METRICS__PORT": "0",
                    "RAGBUS_LOGGING__FORMAT": "json", "RAGBUS_BRIDGE__PORT": "0",
                    "COLUMNS": "200"}

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*RAGBUS, *args], cwd=self.root, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    @property
    def nats_url(self) -> str:
        url: str = json.loads((self.root / "ragbus" / "run.json").read_text())["nats_url"]
        return url

    def sources(self) -> list[tuple[str, str, float]]:
        """The question's sources, as the retriever sends them: (doc, chunk, score)."""

        async def ask() -> list[tuple[str, str, float]]:
            nc = await nats.connect(self.nats_url)
            try:
                query = Query(question=QUESTION, reply_to=f"_INBOX.{new_id()}", top_k=5,
                              generate=False)
                async with Client(nc, Subjects()).open_stream(
                        Subjects().query, query, timeout=60) as events:
                    async for event in events:
                        if isinstance(event, Sources):
                            return [(s.doc_id, s.chunk_id, round(s.score, 5))
                                    for s in event.sources]
            finally:
                await nc.close()
            raise AssertionError("no sources event")

        return anyio.run(ask)


@contextmanager
def running(system: System) -> Iterator[System]:
    proc = subprocess.Popen([*RAGBUS, "up"], cwd=system.root, env=system.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        text = read_until(proc, "Ctrl-C", timeout_s=180)
        assert "ragbus is up" in text, text
        yield system
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == 0


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_backup_restore_into_a_fresh_system_answers_the_same(tmp_path: Path) -> None:
    backup = tmp_path / "backup"
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text)

    with running(System(tmp_path / "first")) as first:
        ingested = first.cli("ingest", str(docs), "--wait")
        assert ingested.returncode == 0, ingested.stdout + ingested.stderr
        asked = first.cli("ask", QUESTION)  # an answer too: audit records of every kind
        assert asked.returncode == 0, asked.stdout + asked.stderr
        before = first.sources()
        made = first.cli("backup", str(backup))
        assert made.returncode == 0, made.stdout + made.stderr
        twice = first.cli("backup", str(backup))
        bare = first.cli("backup", str(tmp_path / "bare"), "--no-audit")
    assert twice.returncode == 1
    assert "is not empty: back up into a new directory" in twice.stderr
    assert bare.returncode == 0, bare.stdout + bare.stderr
    assert json.loads((tmp_path / "bare" / "manifest.json").read_text())["audit"] is None
    assert not (tmp_path / "bare" / "audit.tar.gz").exists()
    manifest = json.loads((backup / "manifest.json").read_text())
    assert manifest["schema"] == 1
    assert manifest["shards"]["default"]["points"] >= 2
    assert manifest["kv"]["docs"]["entries"] == 2
    assert manifest["audit"]["records"] >= 2
    checked = first.cli("backup", "verify", str(backup))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "every digest checks out" in checked.stdout

    with running(System(tmp_path / "second")) as second:
        restored = second.cli("restore", str(backup))
        assert restored.returncode == 0, restored.stdout + restored.stderr
        after = second.sources()
        docs_listed = second.cli("docs", "list")
        again = second.cli("restore", str(backup))
        forced = second.cli("restore", str(backup), "--force")
        forced_sources = second.cli("ask", QUESTION)
    assert before
    assert after == before
    assert "otters.txt" in docs_listed.stdout
    assert again.returncode == 1
    assert "not empty" in again.stderr
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "otters.txt" in forced_sources.stdout
    verified = second.cli("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    records = int(verified.stdout.split("ok: ")[1].split()[0])
    assert records >= manifest["audit"]["records"]

    # the same backup, damaged: a flipped byte in the shard's archive is named
    damaged = tmp_path / "damaged"
    shutil.copytree(backup, damaged)
    flip_a_byte(damaged / "shards" / "default.tar.gz")
    caught = first.cli("backup", "verify", str(damaged))
    assert caught.returncode == 1
    assert "shards/default.tar.gz is corrupted" in caught.stderr
    edited = tmp_path / "edited"  # the manifest itself has a digest too
    shutil.copytree(backup, edited)
    flip_a_byte(edited / "manifest.json")
    named = first.cli("backup", "verify", str(edited))
    assert named.returncode == 1
    assert "manifest.json is corrupted" in named.stderr
    with running(System(tmp_path / "third")) as third:
        refused = third.cli("restore", str(damaged))
        assert refused.returncode == 1
        assert "shards/default.tar.gz is corrupted" in refused.stderr
        # nothing was restored: the shard and the manifests are still empty
        assert third.sources() == []

        newer = tmp_path / "newer"
        shutil.copytree(backup, newer)
        raised = json.loads((newer / "manifest.json").read_text())
        raised["schema"] = 99
        (newer / "manifest.json").write_text(json.dumps(raised))
        too_new = third.cli("restore", str(newer))
        assert too_new.returncode == 1
        assert "UNSUPPORTED_VERSION" in too_new.stderr
        assert "schema 99" in too_new.stderr
