"""The retriever's search side: fan-out, hybrid fusion, filters, widening, cache."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import msgspec
import numpy as np
import pytest
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError

from ragbus.actors.embedder import Embedder
from ragbus.actors.ingestor import Ingestor
from ragbus.actors.retriever import Retriever, collapse, settle, to_sources
from ragbus.config import (
    IngestorSettings,
    NatsSettings,
    RetrieverSettings,
    RuntimeSettings,
    Settings,
)
from ragbus.runtime import BadRequestError, Client, Context
from ragbus.runtime.cli import follow_job, submit_job
from ragbus.runtime.connection import NATS
from ragbus.subjects import (
    Accepted,
    CorpusVersion,
    DocChanged,
    DocDelete,
    Embed,
    ErrorCode,
    Failed,
    IndexApplied,
    IndexUpdate,
    IngestRequest,
    InlineDocument,
    JobState,
    PointUpsert,
    Query,
    QueryFilters,
    Search,
    SearchHit,
    SearchResult,
    Sources,
    Subjects,
    Trim,
)
from tests.support import running

S = Subjects()

DOCS = {
    "otters": ("Sea otters hold hands while sleeping so they do not drift apart. "
               "Otters use rocks as tools to crack open shellfish.", ["animals"]),
    "volcano": ("Volcanic eruptions release ash and sulfur dioxide into the stratosphere, "
                "cooling the climate for a year or two.", ["geology"]),
    "bread": ("Sourdough bread rises because wild yeast and lactobacilli ferment the dough, "
              "producing carbon dioxide and acids.", ["food"]),
    "zyx": ("The Zyxqwerty protocol is an obscure handshake used by legacy modems.",
            ["tech"]),
}


def make_settings(nats_url: str, root: Path, shards: list[str] | None = None,
                  **retriever: object) -> Settings:
    return Settings(
        nats=NatsSettings(url=nats_url),
        runtime=RuntimeSettings(default_timeout_s=30),
        retriever=RetrieverSettings(data_dir=str(root / "qdrant"), shards=shards or ["default"],
                                    **retriever),  # type: ignore[arg-type]
        ingestor=IngestorSettings(progress_interval_ms=0),
    )


async def ingest(nc: NATS, docs: dict[str, tuple[str, list[str]]],
                 collection: str = "default") -> None:
    request = IngestRequest(collection=collection, documents=[
        InlineDocument(id=doc_id, text=text, tags=tags) for doc_id, (text, tags) in docs.items()])
    await submit_job(nc, request)
    final = [p async for p in follow_job(nc, request.job_id, timeout_s=60)][-1]
    assert final.state == JobState.SUCCEEDED, final


async def ask(nc: NATS, query: Query) -> tuple[Sources | Failed, Trim | None]:
    """Publish a query; return its first event and the hand-off to the trimmer (if any)."""
    trims = await nc.subscribe(S.trim)
    events = await nc.subscribe(query.reply_to)
    await nc.publish(S.query, msgspec.json.encode(query))
    first = msgspec.json.decode((await events.next_msg(timeout=10)).data,
                                type=Sources | Failed)
    trim = None
    if isinstance(first, Sources):
        trim = msgspec.json.decode((await trims.next_msg(timeout=10)).data, type=Trim)
    await trims.unsubscribe()
    await events.unsubscribe()
    return first, trim


@asynccontextmanager
async def system(nats_url: str, root: Path, **retriever: object) -> AsyncIterator[Retriever]:
    settings = make_settings(nats_url, root, **retriever)  # type: ignore[arg-type]
    async with running(Embedder(settings), Retriever(settings), Ingestor(settings)) as (
        _, r, _i
    ):
        yield r


def q(nc: NATS, question: str, **kw: object) -> Query:
    return Query(question=question, reply_to=nc.new_inbox(), **kw)  # type: ignore[arg-type]


async def test_with_no_trimmer_the_query_fails_at_once_naming_it(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    async with system(nats_url, tmp_path):
        await ingest(nc, DOCS)
        events = [e async for e in Client(nc, S).stream(S.query, q(nc, "otters?"),
                                                        timeout=30)]
    assert isinstance(events[0], Sources)
    assert isinstance(events[-1], Failed)
    assert events[-1].code == ErrorCode.UNAVAILABLE
    assert events[-1].message == f"no actor is serving {S.trim}: start the context-trimmer"


async def test_a_query_sent_with_a_reply_subject_is_accepted_there_and_goes_on_as_published(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    """The first hop acknowledges: the reply subject gets ``Accepted`` and nothing else
    (the events go to ``reply_to``), and the query goes on exactly as a plain publish
    (no reply subject, as any NATS client may send it) does."""
    async with system(nats_url, tmp_path):
        await ingest(nc, DOCS)
        plain, plain_trim = await ask(nc, q(nc, "why do sea otters hold hands?"))
        query = q(nc, "why do sea otters hold hands?")
        trims = await nc.subscribe(S.trim)
        events = await nc.subscribe(query.reply_to)
        inbox = nc.new_inbox()
        replies = await nc.subscribe(inbox)
        await nc.publish(S.query, msgspec.json.encode(query), reply=inbox)
        accepted = msgspec.json.decode((await replies.next_msg(timeout=10)).data,
                                       type=Accepted)
        sources = msgspec.json.decode((await events.next_msg(timeout=10)).data, type=Sources)
        trim = msgspec.json.decode((await trims.next_msg(timeout=10)).data, type=Trim)
        await nc.flush()
        with pytest.raises(NatsTimeoutError):  # one answer on the reply subject
            await replies.next_msg(timeout=0.5)
    assert accepted.request_id == query.request_id
    assert accepted.actor == "retriever"
    assert isinstance(plain, Sources)
    assert [s.chunk_id for s in sources.sources] == [s.chunk_id for s in plain.sources]
    assert plain_trim is not None
    assert trim.request_id == query.request_id
    assert [s.chunk_id for s in trim.sources] == [s.chunk_id for s in plain_trim.sources]


async def test_query_answers_with_sources_then_hands_off_to_the_trimmer(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    async with system(nats_url, tmp_path):
        await ingest(nc, DOCS)
        query = q(nc, "why do sea otters hold hands?", top_k=2, session_id="s1")
        sources, trim = await ask(nc, query)
    assert isinstance(sources, Sources)
    assert sources.sources[0].doc_id == "otters"
    assert len(sources.sources) == 2
    assert sources.missing_shards == []
    assert trim is not None
    assert trim.request_id == query.request_id
    assert trim.reply_to == query.reply_to
    assert trim.session_id == "s1"
    assert [s.chunk_id for s in trim.sources] == [s.chunk_id for s in sources.sources]
    assert trim.deadline is not None
    assert "retrieval" in trim.timings_ms
    assert trim.question_vector is not None
    assert len(trim.question_vector) == 384 * 4  # for the router's semantic answer cache
    assert trim.cache_scope


async def test_dense_keyword_and_hybrid_each_find_what_they_are_good_at(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    async with system(nats_url, tmp_path, cache=False):
        await ingest(nc, DOCS)
        # a paraphrase with no shared rare word: meaning carries it
        dense, _ = await ask(nc, q(nc, "fermentation makes loaves rise", retrieval="dense"))
        # an invented word: only the keyword signal can match it
        keyword, _ = await ask(nc, q(nc, "Zyxqwerty", retrieval="keyword"))
        hybrid, _ = await ask(nc, q(nc, "Zyxqwerty handshake", retrieval="hybrid"))
        nothing, _ = await ask(nc, q(nc, "unrelatedwordzzz", retrieval="keyword"))
    assert isinstance(dense, Sources)
    assert dense.sources[0].doc_id == "bread"
    assert isinstance(keyword, Sources)
    assert [s.doc_id for s in keyword.sources] == ["zyx"]
    assert isinstance(hybrid, Sources)
    assert hybrid.sources[0].doc_id == "zyx"
    assert isinstance(nothing, Sources)
    assert nothing.sources == []


async def test_filters_and_self_query_terms(nats_url: str, nc: NATS, tmp_path: Path) -> None:
    async with system(nats_url, tmp_path, cache=False):
        await ingest(nc, DOCS)
        by_tag, _ = await ask(nc, q(nc, "what happens?", filters=QueryFilters(tags=["food"])))
        lifted, trim = await ask(nc, q(nc, "tag:geology what happens after an eruption?"))
        by_doc, _ = await ask(nc, q(nc, "doc:otters anything"))
        future, _ = await ask(nc, q(nc, "after:2999-01-01 otters"))
        past, _ = await ask(nc, q(nc, "before:2999-01-01 otters", top_k=1))
    assert isinstance(by_tag, Sources)
    assert {s.doc_id for s in by_tag.sources} == {"bread"}
    assert isinstance(lifted, Sources)
    assert {s.doc_id for s in lifted.sources} == {"volcano"}
    assert trim is not None
    assert trim.question == "what happens after an eruption?"
    assert isinstance(by_doc, Sources)
    assert {s.doc_id for s in by_doc.sources} == {"otters"}
    assert isinstance(future, Sources)
    assert future.sources == []
    assert isinstance(past, Sources)
    assert [s.doc_id for s in past.sources] == ["otters"]


async def test_soft_deleted_documents_never_appear(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    async with system(nats_url, tmp_path):
        await ingest(nc, DOCS)
        before, _ = await ask(nc, q(nc, "otters", top_k=4))
        await Client(nc).request(S.docs("delete"), DocDelete(doc_id="otters"), DocChanged)
        after, _ = await ask(nc, q(nc, "otters", top_k=4))
    assert isinstance(before, Sources)
    assert "otters" in {s.doc_id for s in before.sources}
    assert isinstance(after, Sources)
    assert "otters" not in {s.doc_id for s in after.sources}


async def test_widening_replaces_chunks_by_their_parent_sections(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    long_doc = "\n\n".join(
        f"Section {i} on glaciers. " + " ".join(f"Glacier fact {i}.{j} about ice flow and "
                                                  f"moraines number {j}." for j in range(12))
        for i in range(3))
    async with system(nats_url, tmp_path, cache=False, per_doc=0):
        await ingest(nc, {"glaciers": (long_doc, [])})
        narrow, _ = await ask(nc, q(nc, "glacier moraines ice flow", top_k=5))
        wide, _ = await ask(nc, q(nc, "glacier moraines ice flow", top_k=5, widen=True))
    assert isinstance(narrow, Sources)
    assert isinstance(wide, Sources)
    assert len(narrow.sources) > len(wide.sources)  # siblings collapsed into their parent
    parents = [s.metadata["parent_id"] for s in wide.sources]
    assert len(parents) == len(set(parents))
    assert all(len(w.text) > max(len(n.text) for n in narrow.sources) for w in wide.sources)


GLACIERS = {
    "glaciers": ("\n\n".join(f"Glacier ice flows downhill, section {i}: moraines, crevasses and "
                             f"meltwater of valley glaciers, observation {i}." * 3
                             for i in range(8)), []),
    "ice-age": ("The last ice age ended when glaciers retreated from northern Europe.", []),
    "sea-ice": ("Sea ice forms when ocean water freezes; it is not glacier ice.", []),
}


@pytest.mark.parametrize("mode", ["hybrid", "dense", "keyword"])
async def test_one_source_per_document_so_a_long_one_cannot_crowd_out_the_rest(
    nats_url: str, nc: NATS, tmp_path: Path, mode: str
) -> None:
    question = "valley glacier moraines and crevasses"
    # per_doc = 1 is the default
    async with system(nats_url, tmp_path, cache=False, shards=["one"]):
        await ingest(nc, GLACIERS, collection="one")
        one, _ = await ask(nc, q(nc, question, top_k=3, retrieval=mode))
    async with system(nats_url, tmp_path, cache=False, shards=["every"], per_doc=0):
        await ingest(nc, GLACIERS, collection="every")
        every, _ = await ask(nc, q(nc, question, top_k=3, retrieval=mode))
    assert isinstance(one, Sources)
    assert isinstance(every, Sources)
    assert sorted(s.doc_id for s in one.sources) == sorted(GLACIERS)
    assert [s.doc_id for s in every.sources].count("glaciers") >= 2  # what it prevents


async def test_rrf_fusion_is_still_there_for_who_configures_it(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    async with system(nats_url, tmp_path, cache=False, fusion="rrf", dense_weight=0.5):
        await ingest(nc, DOCS)
        hybrid, _ = await ask(nc, q(nc, "Zyxqwerty handshake"))
    assert isinstance(hybrid, Sources)
    assert hybrid.sources[0].doc_id == "zyx"
    assert hybrid.sources[0].score == pytest.approx(2 / 61)  # first in both lists


class SlowRetriever(Retriever):
    """A real shard that answers late: its store is fine, its searches are slow."""

    async def search(self, request: Search, ctx: Context):  # type: ignore[no-untyped-def,override]
        await anyio.sleep(5)
        return await super().search(request, ctx)


SlowRetriever._endpoints = Retriever._endpoints  # same endpoints, slowed handler by name


async def test_fan_out_answers_with_partial_sources_when_a_shard_is_slow_or_dead(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    def shard(name: str, cls: type[Retriever] = Retriever) -> Retriever:
        return cls(make_settings(nats_url, tmp_path / name, shards=[name],
                                 search_timeout_s=1.0, cache=False))

    base = make_settings(nats_url, tmp_path / "ingest")
    async with running(Embedder(base), Ingestor(base), shard("a"), shard("b"),
                       shard("slow", SlowRetriever)):
        await ingest(nc, {"otters": DOCS["otters"]}, collection="a")
        await ingest(nc, {"bread": DOCS["bread"]}, collection="b")
        await ingest(nc, {"volcano": DOCS["volcano"]}, collection="slow")
        query = q(nc, "otters and bread", collections=["a", "b", "slow", "dead"], top_k=5)
        started = anyio.current_time()
        sources, trim = await ask(nc, query)
        waited = anyio.current_time() - started
    assert isinstance(sources, Sources)
    assert {s.doc_id for s in sources.sources} == {"otters", "bread"}
    assert sorted(sources.missing_shards) == ["dead", "slow"]
    assert trim is not None  # the answer goes on with what arrived
    assert waited < 5  # it did not wait for the slow shard


class GatedEmbedder(Embedder):
    """The real model, answering only once ``gate`` is set (or after 5 s)."""

    gate: anyio.Event

    async def embed(self, request: Embed, ctx: Context):  # type: ignore[no-untyped-def,override]
        with anyio.move_on_after(5):
            await self.gate.wait()
        return await super().embed(request, ctx)


GatedEmbedder._endpoints = Embedder._endpoints


async def test_the_keyword_half_goes_out_while_the_question_is_being_embedded(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    """The embedder holds its reply until a keyword search reaches a remote shard:
    a retriever that embedded first and searched after would wait the full 5 s."""
    front = make_settings(nats_url, tmp_path / "a", shards=["a"], cache=False)
    other = make_settings(nats_url, tmp_path / "b", shards=["b"], cache=False)
    embedder = GatedEmbedder(front)
    embedder.gate = anyio.Event()
    embedder.gate.set()  # open while ingesting
    seen: list[Search] = []

    async def sniff(msg: Msg) -> None:
        search = msgspec.json.decode(msg.data, type=Search)
        seen.append(search)
        if search.sparse is not None:
            embedder.gate.set()

    # whichever retriever takes the query, the other's shard is remote to it
    sniffer = await nc.subscribe(f"{S.prefix}.search.*", cb=sniff)
    async with running(embedder, Ingestor(front), Retriever(front), Retriever(other)):
        await ingest(nc, {"zyx": DOCS["zyx"]}, collection="b")
        embedder.gate = anyio.Event()
        started = anyio.current_time()
        sources, _ = await ask(nc, q(nc, "Zyxqwerty handshake", collections=["a", "b"]))
        waited = anyio.current_time() - started
    await sniffer.unsubscribe()
    assert isinstance(sources, Sources)
    assert [s.doc_id for s in sources.sources] == ["zyx"]
    assert sources.missing_shards == []
    assert waited < 4
    # one shard went over the bus: the keyword half first, the dense half once the vector came
    assert [(x.sparse is not None, x.dense is not None) for x in seen] == [
        (True, False), (False, True)]


async def test_the_questions_vector_is_asked_for_while_the_corpus_versions_are_read(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    """The versions read (a KV round trip) does not hold up the embedding: with the read
    taking 0.5 s, the embed request goes out before it ends, and the query is answered."""
    read: list[float] = []

    class SlowVersions(Retriever):
        async def corpus_versions(self, shards: list[str]) -> dict[str, int] | None:
            await anyio.sleep(0.5)
            read.append(anyio.current_time())
            return await super().corpus_versions(shards)

    asked: list[float] = []

    async def sniff(msg: Msg) -> None:
        asked.append(anyio.current_time())

    settings = make_settings(nats_url, tmp_path)
    async with running(Embedder(settings), SlowVersions(settings), Ingestor(settings)):
        await ingest(nc, DOCS)
        sniffer = await nc.subscribe(S.embed, cb=sniff)
        await nc.flush()
        first, _ = await ask(nc, q(nc, "why do sea otters hold hands?"))
        again, _ = await ask(nc, q(nc, "why do sea otters hold hands?"))  # a cache hit
    await sniffer.unsubscribe()
    assert isinstance(first, Sources)
    assert isinstance(again, Sources)
    assert first.sources[0].doc_id == again.sources[0].doc_id == "otters"
    assert len(read) == 2
    assert len(asked) == 2  # also asked for beside the cache lookup that then hit
    assert asked[0] < read[0] - 0.3


async def test_a_shard_served_by_the_retriever_itself_is_searched_without_the_bus(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    local = await nc.subscribe(S.search("default"))
    async with system(nats_url, tmp_path, cache=False):
        await ingest(nc, DOCS)
        sources, _ = await ask(nc, q(nc, "why do sea otters hold hands?"))
    assert isinstance(sources, Sources)
    assert sources.sources[0].doc_id == "otters"
    assert local.pending_msgs == 0  # no Search went out for it
    await local.unsubscribe()


async def test_retrieval_cache_serves_repeats_and_invalidates_on_reingest(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    async with system(nats_url, tmp_path):
        await ingest(nc, DOCS)
        _, first = await ask(nc, q(nc, "sourdough"))
        _, second = await ask(nc, q(nc, "sourdough"))
        await ingest(nc, {"bread": ("Rye bread is dense and sour.", ["food"])})
        third_sources, third = await ask(nc, q(nc, "sourdough"))
    assert first is not None
    assert "retrieval_cache_hit" not in first.timings_ms
    assert second is not None
    assert second.timings_ms.get("retrieval_cache_hit") == 1.0
    assert third is not None
    assert "retrieval_cache_hit" not in third.timings_ms
    assert first.cache_scope == second.cache_scope  # same corpus: answers may be reused
    assert second.question_vector == first.question_vector
    assert third.cache_scope != first.cache_scope  # the corpus changed: they may not
    assert isinstance(third_sources, Sources)
    assert "Rye" in next(s.text for s in third_sources.sources if s.doc_id == "bread")


def upsert(model: str, n: int = 1, *, deletes: list[str] | None = None) -> IndexUpdate:
    rng = np.random.default_rng(n)
    vectors = [rng.standard_normal(384).astype("<f4") for _ in range(n)]
    return IndexUpdate(model_id=model, dim=384, deletes=deletes or [], upserts=[
        PointUpsert(id=str(uuid.UUID(int=i + 1)), vector=v.tobytes(),
                    payload={"doc_id": f"d{i}", "text": "x", "deleted": False})
        for i, v in enumerate(vectors)])


async def test_one_shard_holds_one_embedding_model_and_says_so(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    """Vectors of two models in one space rank nonsense; nothing mixes them silently."""
    client = Client(nc, S)
    async with system(nats_url, tmp_path):
        await client.request(S.index_apply("default"), upsert("model-a", 2), IndexApplied)
        with pytest.raises(BadRequestError, match=r"holds vectors of embedding model "
                                                  r"'model-a'; these come from 'model-b'"):
            await client.request(S.index_apply("default"), upsert("model-b"), IndexApplied)
        vector = np.ones(384, dtype="<f4").tobytes()
        with pytest.raises(BadRequestError, match="the question was embedded by 'model-b'"):
            await client.request(S.search("default"), Search(shard="default", dense=vector,
                                                              model="model-b"), SearchResult)
        found = await client.request(S.search("default"), Search(
            shard="default", dense=vector, model="model-a"), SearchResult)
        # emptied, the shard takes the new model
        ids = [str(uuid.UUID(int=i + 1)) for i in range(2)]
        await client.request(S.index_apply("default"), IndexUpdate(
            model_id="model-a", dim=384, deletes=ids), IndexApplied)
        await client.request(S.index_apply("default"), upsert("model-b"), IndexApplied)
    assert len(found.dense) == 2


class LossyIngestor(Ingestor):
    """An ingestor whose corpus-version announcements are lost on the way (a retriever
    reconnecting, a slow consumer dropped by the server)."""

    async def announce(self, change: CorpusVersion) -> None:
        self.lost.append(change)

    lost: list[CorpusVersion] = []  # noqa: RUF012 - one test, one list


async def test_a_lost_corpus_version_message_never_serves_a_stale_retrieval(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    settings = make_settings(nats_url, tmp_path)
    async with running(Embedder(settings), Retriever(settings), LossyIngestor(settings)):
        await ingest(nc, DOCS)
        _, first = await ask(nc, q(nc, "sourdough"))
        _, cached = await ask(nc, q(nc, "sourdough"))
        await ingest(nc, {"bread": ("Rye bread is dense and sour.", ["food"])})
        fresh_sources, fresh = await ask(nc, q(nc, "sourdough"))
    assert len(LossyIngestor.lost) == 2  # neither version change was announced
    assert first is not None
    assert cached is not None
    assert cached.timings_ms.get("retrieval_cache_hit") == 1.0
    assert fresh is not None
    assert "retrieval_cache_hit" not in fresh.timings_ms
    assert fresh.cache_scope != first.cache_scope  # nor may a cached answer be reused
    assert isinstance(fresh_sources, Sources)
    assert "Rye" in next(s.text for s in fresh_sources.sources if s.doc_id == "bread")


@pytest.mark.parametrize(("body", "needle"), [
    ({"question": "x", "top_k": 0}, "top_k"),
    ({"question": "tag:foo"}, "empty"),
    ({"question": "x", "filters": {"after": "last tuesday"}}, "ISO 8601"),
    ({"question": 42}, "Query"),
])
async def test_bad_queries_get_bad_request_on_the_reply_subject(
    nats_url: str, nc: NATS, tmp_path: Path, body: dict[str, object], needle: str
) -> None:
    async with system(nats_url, tmp_path):
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish(S.query, msgspec.json.encode({**body, "reply_to": inbox,
                                                       "request_id": "bad-0123456789abcdef"}))
        event = msgspec.json.decode((await sub.next_msg(timeout=10)).data, type=Failed)
    assert event.code == "BAD_REQUEST"
    assert needle in event.message


# -- settle: the payloads of the hits a query keeps, read after fusion ---------------------


def _hits(n: int, *, docs: int, seed: int) -> list[tuple[str, float, dict[str, object]]]:
    """``n`` fused hits, best first, of ``docs`` documents with two parents each."""
    rng = np.random.default_rng(seed)
    scores = sorted(rng.random(n), reverse=True)
    out = []
    for i, score in enumerate(scores):
        doc = int(rng.integers(docs))
        out.append((f"c{i}", float(score), {"doc_id": f"d{doc}", "parent_id": f"d{doc}/{i % 2}",
                                            "text": f"chunk {i}", "_shard": "s"}))
    return out


class Fetches:
    """A shard's payloads read by id, each read counted."""

    def __init__(self, payloads: dict[str, dict[str, object]]) -> None:
        self.payloads = payloads
        self.asked: list[str] = []

    async def __call__(self, shard: str, ids: Sequence[str],
                       widen: bool) -> dict[str, dict[str, object]]:
        assert shard == "s"
        self.asked.extend(ids)
        return {i: self.payloads[i] for i in ids if i in self.payloads}


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("per_doc", "top_k", "widen"),
                         [(1, 5, False), (1, 10, False), (0, 5, False), (2, 3, False),
                          (0, 5, True), (1, 40, False)])
async def test_reading_only_the_kept_hits_payloads_gives_the_same_sources(
    seed: int, per_doc: int, top_k: int, widen: bool
) -> None:
    hits = _hits(200, docs=30, seed=seed)
    full = [SearchHit(chunk_id=c, score=s, payload=p) for c, s, p in hits]
    light = [SearchHit(chunk_id=c, score=s, payload={"_shard": "s"}) for c, s, _ in hits]
    fetch = Fetches({c: p for c, _, p in hits})

    settled = await settle(light, per_doc=per_doc, want=top_k, widen=widen, fetch=fetch,
                           light={"s"})

    expected = to_sources(collapse(full, per_doc), top_k, widen=widen)
    assert to_sources(settled, top_k, widen=widen) == expected
    assert len(fetch.asked) < len(hits) or len(expected) < top_k  # the head, not everything
    assert len(set(fetch.asked)) == len(fetch.asked)  # no payload read twice


async def test_settle_reads_one_window_when_the_head_suffices_and_drops_vanished_points(
) -> None:
    hits = [SearchHit(chunk_id=f"c{i}", score=1 - i / 100, payload={"_shard": "s"})
            for i in range(100)]
    payloads: dict[str, dict[str, object]] = {
        f"c{i}": {"doc_id": f"d{i}", "text": str(i)} for i in range(100) if i != 1}
    fetch = Fetches(payloads)

    settled = await settle(hits, per_doc=1, want=5, widen=False, fetch=fetch, light={"s"})

    assert [h.chunk_id for h in settled] == ["c0", "c2", "c3", "c4", "c5"]  # c1 is gone
    assert len(fetch.asked) == 16


async def test_settle_leaves_a_remote_shards_payloads_alone() -> None:
    remote = [SearchHit(chunk_id=f"r{i}", score=1 - i / 10,
                        payload={"doc_id": f"r{i}", "_shard": "far"}) for i in range(3)]
    local = [SearchHit(chunk_id="c0", score=0.95, payload={"_shard": "s"})]
    fetch = Fetches({"c0": {"doc_id": "c0", "_shard": "s"}})

    settled = await settle(sorted(remote + local, key=lambda h: -h.score), per_doc=1, want=4,
                           widen=False, fetch=fetch, light={"s"})

    assert [h.chunk_id for h in settled] == ["r0", "c0", "r1", "r2"]
    assert fetch.asked == ["c0"]


async def test_a_local_shard_is_searched_without_payloads_and_reads_only_the_kept_ones(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    """The query path's payload reads are the head of the ranking, not its candidates."""
    read: list[int] = []

    class Counting(Retriever):
        async def fetch(self, shard: str, ids: Sequence[str],
                        widen: bool) -> dict[str, dict[str, object]]:
            read.append(len(ids))
            return await super().fetch(shard, ids, widen)

    docs = {f"doc{i}": (f"Note {i} about sea otters, kelp forests and tool use number {i}.", [])
            for i in range(40)}
    settings = make_settings(nats_url, tmp_path, cache=False)
    async with running(Embedder(settings), Counting(settings), Ingestor(settings)):
        await ingest(nc, docs)
        sources, _ = await ask(nc, q(nc, "sea otters tool use", top_k=3))
    assert isinstance(sources, Sources)
    assert len(sources.sources) == 3
    assert all(s.text.startswith("Note") and s.doc_id in docs for s in sources.sources)
    assert sum(read) == 16  # one window of the ranking's head, of 40 candidates per half
