"""``ragbus ingest PATH`` from anywhere: the files go through the uploads object store.

The client runs as its own process in its own folder; the folder is deleted before the
ingestor starts (a ``ragbus up`` process with another working directory and data dir),
so the job can only have read the uploads bucket.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from nats.js.errors import ObjectNotFoundError

from ragbus.actors.embedder import Embedder
from ragbus.actors.ingestor import Ingestor
from ragbus.actors.retriever import Retriever
from ragbus.config import (
    IngestorSettings,
    NatsSettings,
    RetrieverSettings,
    RuntimeSettings,
    Settings,
)
from ragbus.runtime import Client
from ragbus.runtime.cli import follow_job
from ragbus.runtime.connection import NATS
from ragbus.runtime.ingest import open_uploads
from ragbus.subjects import DocList, DocListed, JobProgress, JobState, Subjects
from tests.support import running
from tests.support.cli import RAGBUS, read_until

S = Subjects()
MAX_BYTES = 20_000


def settings_for(nats_url: str, data: Path, *, keep_uploads: bool) -> Settings:
    return Settings(
        nats=NatsSettings(url=nats_url),
        runtime=RuntimeSettings(default_timeout_s=60),
        retriever=RetrieverSettings(data_dir=str(data / "qdrant")),
        ingestor=IngestorSettings(progress_interval_ms=0, max_file_bytes=MAX_BYTES,
                                  keep_uploads=keep_uploads),
    )


def write_handbook(client: Path) -> Path:
    folder = client / "handbook"
    (folder / "deep").mkdir(parents=True)
    (folder / "guide.md").write_text("# Guide\n\nOtters hold hands while they sleep.\n")
    (folder / "deep" / "rivers.txt").write_text("Rivers carry water to the sea.\n")
    (folder / "records.jsonl").write_text(
        json.dumps({"_id": "r1", "title": "First", "text": "Record one text."}) + "\n")
    (folder / "tool.exe").write_bytes(b"MZ")
    (folder / "huge.txt").write_text("word " * (MAX_BYTES // 4))
    return folder


def cli_ingest(nats_url: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAGBUS_NATS__URL": nats_url, "COLUMNS": "200",
           "RAGBUS_INGESTOR__MAX_FILE_BYTES": str(MAX_BYTES)}
    return subprocess.run([*RAGBUS, "ingest", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=180, check=False)


def job_id_of(output: str) -> str:
    found = re.search(r"submitted job (\S+)", output)
    assert found, output
    return found.group(1)


def uploaded_count(output: str) -> int:
    found = re.search(r"uploaded (\d+) files", output)
    assert found, output
    return int(found.group(1))


async def finished(nc: NATS, job_id: str) -> JobProgress:
    return [p async for p in follow_job(nc, job_id, timeout_s=120)][-1]


def digests(folder: Path, *names: str) -> list[str]:
    """The object names the files get: their SHA-256."""
    return sorted(hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in names)


async def present(nc: NATS, names: list[str]) -> list[str]:
    """Those of ``names`` that are objects in the uploads bucket."""
    store = await open_uploads(nc)
    found = []
    for name in names:
        try:
            info = await store.get_info(name)
        except ObjectNotFoundError:
            continue
        found.append(info.name)
    return sorted(found)


def start_ingest_side(nats_url: str, server: Path, *, keep_uploads: bool
                      ) -> subprocess.Popen[str]:
    """Embedder, retriever and ingestor as their own ``ragbus up`` process, in ``server``
    (its working directory and data dir): another machine, as far as the client knows."""
    server.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGBUS_")}
    env.update({"RAGBUS_NATS__URL": nats_url, "RAGBUS_DATA_DIR": str(server / "data"),
                "RAGBUS_METRICS__PORT": "0", "RAGBUS_LOGGING__FORMAT": "json",
                "RAGBUS_INGESTOR__KEEP_UPLOADS": "true" if keep_uploads else "false",
                "RAGBUS_INGESTOR__MAX_FILE_BYTES": str(MAX_BYTES)})
    with (server / "stderr.log").open("a") as log:
        proc = subprocess.Popen([*RAGBUS, "up", "--only", "embedder,retriever,ingestor"],
                                cwd=server, env=env, text=True, stdout=subprocess.PIPE,
                                stderr=log)
    text = read_until(proc, "Ctrl-C", timeout_s=120)
    if "ragbus is up" not in text:
        proc.kill()
        raise AssertionError(text + (server / "stderr.log").read_text())
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


@asynccontextmanager
async def ingest_side(nats_url: str, server: Path, *, keep_uploads: bool
                      ) -> AsyncIterator[None]:
    proc = await anyio.to_thread.run_sync(
        lambda: start_ingest_side(nats_url, server, keep_uploads=keep_uploads))
    try:
        yield
    finally:
        await anyio.to_thread.run_sync(stop, proc)


async def test_a_folder_is_uploaded_then_ingested_by_an_ingestor_that_never_sees_it(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    client = tmp_path / "client"
    folder = write_handbook(client)
    sent = digests(folder, "guide.md", "deep/rivers.txt", "records.jsonl")

    first = await anyio.to_thread.run_sync(cli_ingest, nats_url, client, "handbook",
                                           "--tag", "hb")
    assert first.returncode == 0, first.stderr
    assert uploaded_count(first.stdout) == 3  # guide, rivers, records; not exe nor huge
    assert await present(nc, [*sent, *digests(folder, "tool.exe", "huge.txt")]) == sent
    shutil.rmtree(client)  # from now on the files exist only in the bucket

    server = tmp_path / "server"
    async with ingest_side(nats_url, server, keep_uploads=True):
        job = await finished(nc, job_id_of(first.stdout))
        assert job.state == JobState.SUCCEEDED
        assert job.files_total == 5
        codes = {e.path: e.code for e in job.errors}
        assert codes == {"handbook/tool.exe": "unsupported", "handbook/huge.txt": "too_large"}
        listed = await Client(nc).request(S.docs("list"), DocList(), DocListed)
        assert sorted(d.doc_id for d in listed.docs) == [
            "handbook/deep/rivers.txt", "handbook/guide.md", "r1"]
        assert {tuple(d.tags) for d in listed.docs} == {("hb",)}
        assert await present(nc, sent) == sent  # keep_uploads

        write_handbook(client)  # the same files again: nothing new is sent or embedded
        again = await anyio.to_thread.run_sync(cli_ingest, nats_url, client, "handbook",
                                               "--tag", "hb", "--wait")
        assert again.returncode == 0, again.stderr
        assert uploaded_count(again.stdout) == 0
        second = await finished(nc, job_id_of(again.stdout))
        assert second.state == JobState.SUCCEEDED
        assert second.embeddings_computed == 0
        assert second.docs_done == 3

    async with ingest_side(nats_url, server, keep_uploads=False):
        old_guide = digests(folder, "guide.md")  # not in the next job: kept
        (folder / "guide.md").write_text("# Guide\n\nOtters also use tools.\n")
        third = await anyio.to_thread.run_sync(cli_ingest, nats_url, client, "handbook",
                                               "--tag", "hb", "--wait")
        assert third.returncode == 0, third.stderr
        assert uploaded_count(third.stdout) == 1  # only the edited file
        done = await finished(nc, job_id_of(third.stdout))
        assert done.state == JobState.SUCCEEDED
        assert done.docs_changed == 1
        edited = digests(folder, "guide.md")
        # the job has finished: its uploads are gone
        assert await present(nc, [*sent, *edited]) == old_guide
    assert not (server / "handbook").exists()  # nothing of the client's landed there


async def test_an_upload_gone_or_changed_in_the_bucket_is_a_per_file_error(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    client = tmp_path / "client"
    (client / "docs").mkdir(parents=True)
    (client / "docs" / "a.txt").write_text("Alpha text.\n")
    (client / "docs" / "b.txt").write_text("Beta text.\n")
    sent = await anyio.to_thread.run_sync(cli_ingest, nats_url, client, "docs")
    assert sent.returncode == 0, sent.stderr
    store = await open_uploads(nc)
    await store.delete(*digests(client / "docs", "a.txt"))
    await store.put(*digests(client / "docs", "b.txt"), b"Not what was uploaded.\n")
    settings = settings_for(nats_url, tmp_path, keep_uploads=False)
    async with running(Embedder(settings), Retriever(settings), Ingestor(settings)):
        job = await finished(nc, job_id_of(sent.stdout))
    assert job.state == JobState.SUCCEEDED
    assert [(e.path, e.code) for e in job.errors] == [("docs/a.txt", "unreadable"),
                                                      ("docs/b.txt", "unreadable")]
    assert "no longer in the uploads bucket" in job.errors[0].message
    assert "do not match the file's SHA-256" in job.errors[1].message
    assert job.docs_done == 0


@pytest.mark.parametrize(("name", "says"), [
    ("missing", "is not a file or folder here"),
    ("tool.exe", "the ingestor reads"),
])
async def test_what_cannot_be_uploaded_is_refused_before_anything_is_sent(
    nats_url: str, nc: NATS, tmp_path: Path, name: str, says: str
) -> None:
    (tmp_path / "tool.exe").write_bytes(b"MZ")
    done = await anyio.to_thread.run_sync(cli_ingest, nats_url, tmp_path, name)
    assert done.returncode != 0
    assert says in done.stderr
    assert "submitted job" not in done.stdout



async def test_a_job_over_the_message_limit_is_refused_with_what_to_do(
    nats_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(8):
        (folder / f"note-{i}.txt").write_text(f"Note number {i}.\n")
    env = {**os.environ, "RAGBUS_NATS__URL": nats_url, "RAGBUS_RUNTIME__MAX_MESSAGE_BYTES": "1000"}
    done = await anyio.to_thread.run_sync(lambda: subprocess.run(
        [*RAGBUS, "ingest", "many"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120, check=False))
    assert done.returncode == 1
    assert "TOO_LARGE" in done.stderr
    assert "ingest it in parts" in done.stderr
    assert "submitted job" not in done.stdout
