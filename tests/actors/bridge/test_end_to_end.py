"""Through the real query path: embedder, retriever, ingestor, context-trimmer and the
router with its extractive provider (no LLM), behind the bridge, on one real bus."""

from __future__ import annotations

from pathlib import Path

import httpx
import msgspec

from ragbus.actors.bridge import Bridge
from ragbus.actors.embedder import Embedder
from ragbus.actors.ingestor import Ingestor
from ragbus.actors.retriever import Retriever
from ragbus.actors.router import Router
from ragbus.actors.trimmer import ContextTrimmer
from ragbus.config import IngestorSettings, ProviderSettings, RetrieverSettings, RouterSettings
from ragbus.runtime import Client
from ragbus.runtime.cli import follow_job, submit_job
from ragbus.runtime.connection import NATS
from ragbus.subjects import Done, IngestRequest, InlineDocument, JobState, Query, Subjects, Token
from tests.support import running

from .wsclient import ask, frames_until_end, make_settings, open_ws, recv

S = Subjects()

DOCS = [
    InlineDocument(id="otters", title="Sea otters", tags=["animals"],
                   text="Sea otters hold hands while sleeping so they do not drift apart. "
                        "Otters use rocks as tools to crack open shellfish."),
    InlineDocument(id="bread", title="Sourdough", tags=["food"],
                   text="Sourdough bread rises because wild yeast and lactobacilli ferment "
                        "the dough, producing carbon dioxide and acids."),
]


async def test_a_question_over_the_websocket_is_answered_by_the_real_query_path(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    base = make_settings(nats_url, ready_actors=["embedder", "retriever", "context-trimmer",
                                                 "router"])
    settings = msgspec.structs.replace(
        base, data_dir=str(tmp_path),
        retriever=RetrieverSettings(data_dir=str(tmp_path / "qdrant")),
        ingestor=IngestorSettings(progress_interval_ms=0),
        router=RouterSettings(providers=[ProviderSettings(name="extractive",
                                                          kind="extractive")]))
    actors = (Embedder(settings), Retriever(settings), Ingestor(settings),
              ContextTrimmer(settings), Router(settings), Bridge(settings))
    async with running(*actors) as started:
        bridge = started[-1]
        assert isinstance(bridge, Bridge)
        request = IngestRequest(documents=DOCS)
        await submit_job(nc, request)
        final = [p async for p in follow_job(nc, request.job_id, timeout_s=60)][-1]
        assert final.state == JobState.SUCCEEDED
        async with httpx.AsyncClient(base_url=bridge.url, timeout=5) as http:
            ready = (await http.get("/readyz")).json()
        question = "Why do sea otters hold hands?"
        async with open_ws(bridge) as ws:
            await recv(ws)
            await ask(ws, "e2e", question, session_id="e2e-session", top_k=2)
            frames = await frames_until_end(ws, "e2e", timeout=30)
            await ask(ws, "follow-up", "What do they use rocks for?",
                      session_id="e2e-session")
            follow_up = await frames_until_end(ws, "follow-up", timeout=30)
        # the same question straight on the bus, for the same answer
        direct = [e async for e in Client(nc, S).stream(
            S.query, Query(question=question, reply_to=nc.new_inbox(), top_k=2), timeout=30)]

    assert ready["ready"] is True
    kinds = [f["type"] for f in frames]
    assert kinds[0] == "sources"
    assert kinds[-1] == "done"
    assert "token" in kinds
    assert frames[0]["sources"][0]["doc_id"] == "otters"
    assert frames[0]["sources"][0]["title"] == "Sea otters"
    text = "".join(f["text"] for f in frames if f["type"] == "token")
    assert "hold hands" in text
    done = frames[-1]
    assert done["provider"] == "extractive"
    assert done["text_length"] == len(text)
    assert done["ttft_ms"] is not None
    assert follow_up[-1]["type"] == "done"
    assert "rocks" in "".join(f["text"] for f in follow_up if f["type"] == "token")
    assert isinstance(direct[-1], Done)
    assert "".join(e.text for e in direct if isinstance(e, Token)) == text
