"""The ingestion path end to end: ingestor, embedder and retriever on a real bus."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from ragbus.actors.embedder import Embedder
from ragbus.actors.ingestor import Ingestor
from ragbus.actors.ingestor._chunking import ChunkingConfig, chunk_text
from ragbus.actors.retriever import Retriever
from ragbus.actors.retriever.store import Filter
from ragbus.config import (
    IngestorSettings,
    NatsSettings,
    RetrieverSettings,
    RuntimeSettings,
    Settings,
)
from ragbus.runtime import Client, NotFoundError
from ragbus.runtime.cli import follow_job, submit_job
from ragbus.runtime.connection import NATS
from ragbus.subjects import (
    DocChanged,
    DocDelete,
    DocGet,
    DocList,
    DocListed,
    IngestRequest,
    InlineDocument,
    JobProgress,
    JobState,
    Subjects,
)
from tests.support import running
from tests.support.cli import RAGBUS

S = Subjects()


def make_settings(nats_url: str, tmp_path: Path, **ingestor: object) -> Settings:
    return Settings(
        nats=NatsSettings(url=nats_url),
        runtime=RuntimeSettings(default_timeout_s=60),
        retriever=RetrieverSettings(data_dir=str(tmp_path / "qdrant"), optimize_idle_s=0.5),
        ingestor=IngestorSettings(progress_interval_ms=0, **ingestor),  # type: ignore[arg-type]
    )


@asynccontextmanager
async def pipeline(nats_url: str, tmp_path: Path, roots: list[Path] | None = None
                   ) -> AsyncIterator[Retriever]:
    """The three actors of the ingestion path (a task group cannot span a fixture's yield);
    jobs may read host paths below ``roots`` (default: the test's own ``tmp_path``)."""
    settings = make_settings(nats_url, tmp_path, max_file_bytes=20_000,
                             allowed_roots=[str(r) for r in roots or [tmp_path]])
    async with running(Embedder(settings), Retriever(settings), Ingestor(settings)) as (
        _, retriever, _ingestor
    ):
        yield retriever


async def ingest(nc: NATS, request: IngestRequest) -> JobProgress:
    await submit_job(nc, request)
    last = None
    async for progress in follow_job(nc, request.job_id, timeout_s=120):
        last = progress
    assert last is not None
    return last


async def applied(retriever: Retriever) -> None:
    """Wait for what a query waits for: the shard's corpus version applied by this replica
    (a job is done once the index stream holds its updates; the replica applies them in
    the moment after)."""
    versions = await retriever.corpus_versions(["default"])
    assert versions is not None
    with anyio.fail_after(30):
        await retriever.logs["default"].wait_for(versions["default"])


async def points(retriever: Retriever, **flt: object) -> list[dict[str, object]]:
    await applied(retriever)
    store = retriever.stores["default"]
    page = await retriever.worker.run(store.scroll, filter=Filter(**flt), limit=10_000)
    return [p.payload for p in page.points]


def paragraphs(n: int, topic: str = "rivers") -> list[str]:
    return [
        f"Paragraph {i} is about {topic}. " + " ".join(
            f"Sentence {j} of paragraph {i} says something specific about {topic} number {i}."
            for j in range(6))
        for i in range(n)
    ]


def expected_chunks(text: str, config: ChunkingConfig | None = None) -> set[str]:
    return {c.sha256 for c in chunk_text(text, config or ChunkingConfig()).chunks}


async def test_folder_of_mixed_files_indexes_good_ones_and_reports_bad_ones(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    async with pipeline(nats_url, tmp_path) as retriever:
        docs = tmp_path / "docs"
        docs.mkdir()
        (docs / "rivers.txt").write_text("\n\n".join(paragraphs(3)))
        (docs / "guide.md").write_text("# Guide\n\nIntro text about setup.\n\n## Install\n\n"
                                       "Run the installer and wait for it to finish.\n")
        (docs / "page.html").write_text(
            "<html><head><title>Page</title><script>var x=1;</script></head>"
            "<body><p>Hello from HTML.</p></body></html>")
        (docs / "records.jsonl").write_text(
            json.dumps({"_id": "r1", "title": "First", "text": "Record one text."}) + "\n"
            + "{not json}\n"
            + json.dumps({"_id": "r2", "title": "Second", "text": "Record two text."}) + "\n")
        (docs / "empty.txt").write_text("   \n")
        (docs / "blob.txt").write_bytes(b"\x00\x01\x02binary\x00" * 100)
        (docs / "huge.txt").write_text("word " * 10_000)  # over the 20 kB limit of this test
        (docs / "tool.exe").write_bytes(b"MZ")

        job = await ingest(nc, IngestRequest(path=str(docs), tags=["handbook"]))

        assert job.state == JobState.SUCCEEDED
        assert job.files_total == 8
        assert job.files_done == 8
        assert job.progress == 1.0
        codes = {Path(e.path).name: e.code for e in job.errors}
        assert codes == {"records.jsonl": "bad_record", "empty.txt": "empty",
                         "blob.txt": "binary", "huge.txt": "too_large", "tool.exe": "unsupported"}
        listed = await Client(nc).request(S.docs("list"), DocList(), DocListed)
        assert listed.total == 5  # rivers, guide, page, r1, r2
        indexed = await points(retriever)
        assert len(indexed) == job.chunks_total == job.embeddings_computed
        assert {p["tags"] == ["handbook"] for p in indexed} == {True}
        assert {"r1", "r2"} <= {p["doc_id"] for p in indexed}
        assert not any("var x" in str(p["text"]) for p in indexed)


async def test_editing_one_paragraph_re_embeds_only_what_changed(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    async with pipeline(nats_url, tmp_path) as retriever:
        before = paragraphs(12)
        after = list(before)
        after[7] = after[7].replace("something specific", "an entirely different thing")
        v1, v2 = "\n\n".join(before), "\n\n".join(after)
        changed = expected_chunks(v2) - expected_chunks(v1)
        assert 0 < len(changed) < len(expected_chunks(v2)) / 2  # the edit is local

        first = await ingest(nc, IngestRequest(documents=[InlineDocument(id="doc", text=v1)]))
        old_ids = {p["chunk_sha256"] for p in await points(retriever)}
        second = await ingest(nc, IngestRequest(documents=[InlineDocument(id="doc", text=v2)]))

        assert first.embeddings_computed == len(expected_chunks(v1))
        assert second.embeddings_computed == len(changed)
        assert second.embeddings_reused == len(expected_chunks(v2)) - len(changed)
        indexed = await points(retriever)
        assert {p["chunk_sha256"] for p in indexed} == expected_chunks(v2)  # old chunk gone
        assert (old_ids - expected_chunks(v2))
        assert not (old_ids - expected_chunks(v2)) & {
            p["chunk_sha256"] for p in indexed}
        assert {p["version"] for p in indexed} == {2}
        got = await Client(nc).request(S.docs("get"), DocGet(doc_id="doc"), DocListed)
        assert got.docs[0].version == 2
        # each job's corpus version: the index stream sequence of its last update, and the
        # collection's version once it finished
        assert first.corpus_version is not None
        assert second.corpus_version is not None
        assert second.corpus_version > first.corpus_version
        assert second.corpus_version == (await nc.jetstream().stream_info(
            S.index_stream)).state.last_seq
        assert await retriever.corpus_versions(["default"]) == {
            "default": second.corpus_version}


async def test_reingesting_unchanged_documents_embeds_nothing(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    async with pipeline(nats_url, tmp_path):
        docs = [InlineDocument(id=f"d{i}", text="\n\n".join(paragraphs(3, f"topic {i}")))
                for i in range(5)]
        first = await ingest(nc, IngestRequest(documents=docs))
        again = await ingest(nc, IngestRequest(documents=docs))
        assert first.embeddings_computed > 0
        assert again.embeddings_computed == 0
        assert again.docs_changed == 0
        assert again.embeddings_reused == first.chunks_total


async def test_new_chunking_settings_re_embed_unchanged_documents_and_say_how_many(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    """An unchanged document was skipped on its text's hash alone, so chunks cut (or
    vectors made) under other settings stayed in the index."""
    docs = [InlineDocument(id=f"d{i}", text="\n\n".join(paragraphs(4, f"topic {i}")))
            for i in range(3)]
    before = make_settings(nats_url, tmp_path)
    after = make_settings(nats_url, tmp_path, chunk_tokens=60, overlap_tokens=10)
    async with running(Embedder(before), Retriever(before), Ingestor(before)):
        first = await ingest(nc, IngestRequest(documents=docs))
    async with running(Embedder(after), Retriever(after), Ingestor(after)) as (_, r, _i):
        again = await ingest(nc, IngestRequest(documents=docs))
        once_more = await ingest(nc, IngestRequest(documents=docs))
        indexed = await points(r)
    assert first.docs_reembedded == 0
    assert again.docs_reembedded == 3
    assert again.docs_changed == 3
    assert again.chunks_total > first.chunks_total  # smaller chunks, more of them
    assert once_more.docs_reembedded == 0  # and then it is up to date
    assert once_more.embeddings_computed == 0
    expected = set().union(*(expected_chunks(d.text, ChunkingConfig(chunk_tokens=60,
                                                                    overlap_tokens=10))
                             for d in docs))
    assert {p["chunk_sha256"] for p in indexed} == expected  # no chunk of the old cut is left


async def test_chunks_are_embedded_with_their_title_and_re_embedded_when_that_is_turned_off(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    text = "\n\n".join(paragraphs(4))
    doc = InlineDocument(id="d", title="River handbook", text=text)
    chunks = chunk_text(text).chunks
    assert len(chunks) > 1

    async def ingest_with(embed_context: bool) -> tuple[JobProgress, list[float]]:
        settings = make_settings(nats_url, tmp_path, embed_context=embed_context)
        async with running(Embedder(settings), Retriever(settings), Ingestor(settings)) as (
            embedder, retriever, _
        ):
            job = await ingest(nc, IngestRequest(documents=[doc]))  # a new job id each time
            assert embedder.model is not None
            probe = embedder.model.embed([f"River handbook\n\n{chunks[1].text}"])[0].tolist()
            store = retriever.stores["default"]
            await applied(retriever)
            found = await retriever.worker.run(lambda: store.search(probe, limit=1))
            assert len(await points(retriever)) == len(chunks)  # replaced, never doubled
        return job, [h.score for h in found]

    on, on_score = await ingest_with(True)  # the default
    again, _ = await ingest_with(True)
    off, off_score = await ingest_with(False)
    assert on.embeddings_computed == len(chunks)
    assert on_score[0] == pytest.approx(1.0, abs=1e-3)  # the titled text is what is indexed
    assert again.embeddings_computed == 0  # unchanged: nothing re-embedded
    assert off.docs_changed == 1  # the setting changed what is embedded: re-embedded
    assert off.embeddings_computed == len(chunks)
    assert off_score[0] < 0.99


async def test_delete_hides_a_document_and_purge_removes_it(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    async with pipeline(nats_url, tmp_path) as retriever:
        client = Client(nc)
        await ingest(nc, IngestRequest(documents=[
            InlineDocument(id="keep", text="Otters hold hands while they sleep."),
            InlineDocument(id="gone", text="Otters use rocks as tools to open shells."),
        ]))
        deleted = await client.request(S.docs("delete"), DocDelete(doc_id="gone"), DocChanged)
        assert deleted.doc.deleted

        assert {p["doc_id"] for p in await points(retriever)} == {"keep"}  # hidden from search
        store = retriever.stores["default"]
        assert await retriever.worker.run(store.count, Filter(include_deleted=True)) == 2  # kept
        listed = await client.request(S.docs("list"), DocList(), DocListed)
        assert [d.doc_id for d in listed.docs] == ["keep"]
        everything = await client.request(S.docs("list"), DocList(include_deleted=True), DocListed)
        assert [d.doc_id for d in everything.docs] == ["gone", "keep"]

        await client.request(S.docs("delete"), DocDelete(doc_id="gone", purge=True), DocChanged)
        await applied(retriever)
        assert await retriever.worker.run(store.count, Filter(include_deleted=True)) == 1
        with pytest.raises(NotFoundError):
            await client.request(S.docs("get"), DocGet(doc_id="gone"), DocListed)


async def test_progress_events_are_published_until_the_job_finishes(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    async with pipeline(nats_url, tmp_path):
        request = IngestRequest(documents=[InlineDocument(id=f"p{i}", text=f"Text number {i}.")
                                           for i in range(20)])
        await submit_job(nc, request)
        seen = [p async for p in follow_job(nc, request.job_id, timeout_s=60)]
        assert seen[-1].state == JobState.SUCCEEDED
        assert seen[-1].docs_done == 20
        fractions = [p.progress for p in seen]
        assert fractions == sorted(fractions)  # never goes backwards


def _ingestor_process(nats_url: str, tmp_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "RAGBUS_NATS__URL": nats_url, "RAGBUS_INGESTOR__ACK_WAIT_S": "2",
           "RAGBUS_INGESTOR__DOCS_IN_FLIGHT": "2", "RAGBUS_INGESTOR__PROGRESS_INTERVAL_MS": "0",
           "RAGBUS_METRICS__ENABLED": "false", "RAGBUS_LOGGING__LEVEL": "warning"}
    return subprocess.Popen([*RAGBUS, "actor", "ingestor", "--no-supervise"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


async def test_killed_ingestor_job_is_resumed_with_no_duplicates(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    settings = make_settings(nats_url, tmp_path)
    texts = ["\n\n".join(paragraphs(4, f"subject {i}")) for i in range(40)]
    expected = sum(len(expected_chunks(t)) for t in texts)
    request = IngestRequest(documents=[InlineDocument(id=f"k{i}", text=t)
                                       for i, t in enumerate(texts)])
    async with running(Embedder(settings), Retriever(settings)) as (_, retriever):
        victim = _ingestor_process(nats_url, tmp_path)
        try:
            await submit_job(nc, request)
            async for progress in follow_job(nc, request.job_id, timeout_s=120):
                if progress.docs_done >= 5:
                    break
            victim.send_signal(signal.SIGKILL)  # no drain, no ack: a crash
            victim.wait(timeout=10)
        finally:
            if victim.poll() is None:
                victim.kill()
        assert progress.state == JobState.RUNNING
        async with running(Ingestor(settings)):
            seen = [p async for p in follow_job(nc, request.job_id, timeout_s=120)]
        final = seen[-1]
        assert final.state == JobState.SUCCEEDED
        assert final.attempt == 2  # redelivered after the crash
        indexed = await points(retriever)
    assert len(indexed) == expected
    assert len({(p["doc_id"], p["chunk_sha256"]) for p in indexed}) == expected


async def test_host_paths_are_read_only_below_the_allowed_roots(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    """A remote publisher must not make the ingestor read its host's files: outside
    ``ingestor.allowed_roots`` (after ``..`` and symlinks) a job is FORBIDDEN, and a
    symlink inside an allowed folder that leads out is a per-file error, never read."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "rivers.txt").write_text("\n\n".join(paragraphs(2)))
    (outside / "secret.txt").write_text("The vault code is 4711, said the secret file.")
    (allowed / "link.txt").symlink_to(outside / "secret.txt")
    (allowed / "door").symlink_to(outside)
    async with pipeline(nats_url, tmp_path, roots=[allowed]):
        folder = await ingest(nc, IngestRequest(path=str(allowed)))
        refused = {
            name: await ingest(nc, IngestRequest(path=path)) for name, path in {
                "outside": str(outside / "secret.txt"),
                "dotdot": f"{allowed}/../outside/secret.txt",
                "symlinked": str(allowed / "door" / "secret.txt"),
                "system": "/etc/passwd",
            }.items()}
        relative = await ingest(nc, IngestRequest(path="allowed/rivers.txt"))
        listed = await Client(nc).request(S.docs("list"), DocList(), DocListed)
    assert folder.state == JobState.SUCCEEDED
    # a symlinked folder is not walked into (as before); a symlinked file out is refused
    assert {Path(e.path).name: e.code for e in folder.errors} == {"link.txt": "forbidden",
                                                                 "door": "unreadable"}
    for name, job in refused.items():
        assert job.state == JobState.FAILED, name
        assert job.message.startswith("FORBIDDEN: "), (name, job.message)
        assert "ingestor.allowed_roots" in job.message
    assert relative.state == JobState.FAILED
    assert relative.message.startswith("BAD_REQUEST: ")
    assert [d.doc_id for d in listed.docs] == [str(allowed / "rivers.txt")]


async def test_with_no_allowed_roots_no_host_path_is_read(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    """The default: uploads only."""
    assert IngestorSettings().allowed_roots == []
    (tmp_path / "rivers.txt").write_text("\n\n".join(paragraphs(1)))
    settings = make_settings(nats_url, tmp_path)
    async with running(Ingestor(settings)):
        job = await ingest(nc, IngestRequest(path=str(tmp_path / "rivers.txt")))
    assert job.state == JobState.FAILED
    assert job.message.startswith("FORBIDDEN: ")
    assert "ingestor.allowed_roots is empty" in job.message
    assert "upload" in job.message


async def test_an_unreadable_path_fails_no_files_but_reports_it(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    async with pipeline(nats_url, tmp_path):
        job = await ingest(nc, IngestRequest(path=str(tmp_path / "missing.txt")))
        assert job.state == JobState.SUCCEEDED
        assert [e.code for e in job.errors] == ["unreadable"]
        await anyio.lowlevel.checkpoint()
