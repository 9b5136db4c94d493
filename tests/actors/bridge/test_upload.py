"""``POST /upload``: files through the bridge become an ingest job, with the socket's auth."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from ragbus.actors.bridge import Bridge
from ragbus.actors.embedder import Embedder
from ragbus.actors.ingestor import Ingestor
from ragbus.actors.retriever import Retriever
from ragbus.config import IngestorSettings, RetrieverSettings, Settings
from ragbus.runtime import Client
from ragbus.runtime.cli import follow_job
from ragbus.runtime.connection import NATS
from ragbus.subjects import DocList, DocListed, JobState, Subjects
from tests.support import running

from .wsclient import API_KEY, ORIGIN, make_settings, open_ws, recv

S = Subjects()


def production(nats_url: str, tmp_path: Path, **bridge: Any) -> Settings:
    settings = make_settings(nats_url, environment="production", **bridge)
    return msgspec.structs.replace(
        settings,
        retriever=RetrieverSettings(data_dir=str(tmp_path / "qdrant")),
        ingestor=IngestorSettings(progress_interval_ms=0, max_file_bytes=2_000))


async def post(bridge: Bridge, **kwargs: Any) -> httpx.Response:
    assert bridge.upload_url is not None
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(bridge.upload_url, **kwargs)


async def test_files_posted_with_a_key_are_ingested_as_one_job(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    settings = production(nats_url, tmp_path)
    async with running(Embedder(settings), Retriever(settings), Ingestor(settings),
                       bridge := Bridge(settings)):
        files = [("file", ("notes/otters.md", b"# Otters\n\nSea otters hold hands.\n")),
                 ("file", ("rafts.txt", b"Resting otters form rafts.\n")),
                 ("file", ("big.txt", b"word " * 1_000))]  # over max_file_bytes
        answered = await post(bridge, files=files, data={"tag": "zoo"},
                              headers={"X-API-Key": API_KEY, "Origin": ORIGIN})
        assert answered.status_code == 202, answered.text
        body = answered.json()
        assert body["files"] == ["notes/otters.md", "rafts.txt"]
        assert body["uploaded"] == 2
        assert [s["code"] for s in body["skipped"]] == ["too_large"]
        assert answered.headers["Access-Control-Allow-Origin"] == ORIGIN
        async with open_ws(bridge, headers={"X-API-Key": API_KEY}) as ws:
            await recv(ws)  # ready
            await ws.send(json.dumps({"type": "follow", "job_id": body["job_id"]}))
            frames = [await recv(ws, 120)]
            while not frames[-1].get("finished"):
                frames.append(await recv(ws, 120))
            await ws.send(json.dumps({"type": "follow", "job_id": "no-such-job"}))
            unknown = await recv(ws)
        job = [p async for p in follow_job(nc, body["job_id"], timeout_s=10)][-1]
        listed = await Client(nc).request(S.docs("list"), DocList(), DocListed)
        again = await post(bridge, files=files[:2], headers={"X-API-Key": API_KEY})
    assert {f["type"] for f in frames} == {"job"}
    assert frames[-1]["state"] == "succeeded"
    assert frames[-1]["files_done"] == frames[-1]["files_total"] == 3
    assert [(e["path"], e["code"]) for e in frames[-1]["errors"]] == [("big.txt", "too_large")]
    assert (unknown["type"], unknown["code"]) == ("error", "NOT_FOUND")
    assert job.state == JobState.SUCCEEDED
    assert sorted(d.doc_id for d in listed.docs) == ["notes/otters.md", "rafts.txt"]
    assert {tuple(d.tags) for d in listed.docs} == {("zoo",)}
    assert again.status_code == 202
    assert again.json()["uploaded"] == 2  # the finished job's uploads were removed


@pytest.mark.parametrize(("headers", "status", "code"), [
    ({}, 401, "UNAUTHORIZED"),
    ({"X-API-Key": "not-the-key"}, 401, "UNAUTHORIZED"),
    ({"X-API-Key": API_KEY, "Origin": "https://evil.example"}, 403, "FORBIDDEN"),
])
async def test_an_upload_without_valid_credentials_is_refused_and_says_why(
    nats_url: str, tmp_path: Path, headers: dict[str, str], status: int, code: str
) -> None:
    settings = production(nats_url, tmp_path)
    async with running(bridge := Bridge(settings)):
        answered = await post(bridge, files=[("file", ("a.txt", b"text"))], headers=headers)
    assert answered.status_code == status
    assert answered.json()["code"] == code
    assert answered.json()["message"]


async def test_bad_uploads_get_a_clear_error(nats_url: str, tmp_path: Path) -> None:
    settings = production(nats_url, tmp_path, max_upload_bytes=4_000)
    key = {"X-API-Key": API_KEY}
    async with running(bridge := Bridge(settings)):
        too_large = await post(bridge, files=[("file", ("a.txt", b"x" * 5_000))], headers=key)
        not_multipart = await post(bridge, content=b"hello", headers=key)
        no_files = await post(bridge, files=[("tag", (None, b"zoo"))], headers=key)
        bad_collection = await post(bridge, files=[("file", ("a.txt", b"text"))],
                                    data={"collection": "no spaces"}, headers=key)
    assert too_large.status_code == 413
    assert too_large.json()["code"] == "TOO_LARGE"
    assert "bridge.max_upload_bytes" in too_large.json()["message"]
    assert not_multipart.status_code == 400
    assert "multipart/form-data" in not_multipart.json()["message"]
    assert no_files.status_code == 400
    assert "no files" in no_files.json()["message"]
    assert bad_collection.status_code == 400
    assert bad_collection.json()["code"] == "BAD_REQUEST"
