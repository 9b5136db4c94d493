"""Ingest throughput through the actors vs fastembed alone on the same chunk texts.

Runs the embedded server, embedder, retriever and ingestor in this process (as
``ragbus up`` does), ingests the first N BEIR SciFact abstracts and re-ingests
them unchanged. ``raw`` embeds the same chunk texts (read and chunked by the
same functions, in the same order, checked against what was indexed) with the
bare model, same batch size and threads: half of its batches before the ingest
and half after, so machine noise falls on both sides alike.

``--with-queries`` also runs the context-trimmer (defaults) and asks SciFact
questions (retrieval-only, top_k 5, as the bus delivers them) at a steady 20 a
second, open loop, from the first indexed chunk to the end of the first ingest
(``query_p99_during_ingest_ms``) and then for as long again (10 to 60 s) with
the same documents indexed and nothing ingesting (``query_p99_quiet_ms``, after
any index build that follows the ingest), each timed to ``done`` from its
scheduled send.
``queries_without_sources`` counts queries that failed, missed a shard, got no
hit or took over 10 s; ``failed_codes_during_ingest``/``_quiet`` say why those
that failed did (``OVERLOADED``: refused at once by the retriever's admission).
``ratio`` is then the ingest's rate *with* those queries running against
``raw`` with nothing else running (``raw_runs_queries: false``): what the ingest
keeps of the machine's embedding rate while it serves queries.

    python -m bench.ingest [--docs N] [--corpus PATH] [--with-queries]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec
import structlog

from bench._data import SCIFACT
from bench._stats import dumps, percentile
from ragbus.actors.embedder import Embedder, EmbeddingModel
from ragbus.actors.ingestor import ChunkingConfig, Ingestor, chunk_text, embedded_text, read_file
from ragbus.actors.retriever import Retriever
from ragbus.actors.retriever.store import Filter
from ragbus.actors.trimmer import ContextTrimmer
from ragbus.config import IngestorSettings, NatsSettings, RetrieverSettings, Settings
from ragbus.runtime import Actor, connect
from ragbus.runtime.cli import EmbeddedNats, follow_job, submit_job
from ragbus.runtime.connection import NATS
from ragbus.subjects import (
    Done,
    Failed,
    IngestRequest,
    JobProgress,
    JobState,
    Query,
    QueryEvent,
    Sources,
    Subjects,
)

CORPUS = SCIFACT / "corpus.jsonl"
QUERIES = SCIFACT / "queries.jsonl"
QUERY_RATE = 20.0
QUERY_TIMEOUT_S = 10.0


class QueryLoad:
    """Questions at a steady rate, open loop, each timed from its scheduled send."""

    def __init__(self, nc: NATS, questions: list[str]) -> None:
        self._nc = nc
        self._questions = questions
        self._decoder: msgspec.json.Decoder[QueryEvent] = msgspec.json.Decoder(QueryEvent)
        self.latencies_ms: list[float] = []
        self.without_sources = 0
        #: why queries failed, by error code (OVERLOADED: refused by admission at once)
        self.failed_codes: dict[str, int] = {}

    async def run(self, until: anyio.Event | float) -> None:
        """Ask until ``until`` is set (an event) or for that many seconds (a float)."""
        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            i = 0
            while True:
                due = start + i / QUERY_RATE
                if isinstance(until, float):
                    if due - start >= until:
                        break
                elif until.is_set():
                    break
                await anyio.sleep(max(0.0, due - time.perf_counter()))
                tg.start_soon(self._one, self._questions[i % len(self._questions)], due)
                i += 1

    async def _one(self, question: str, due: float) -> None:
        inbox = self._nc.new_inbox()
        sub = await self._nc.subscribe(inbox)
        ok = False
        try:
            await self._nc.publish(Subjects().query, msgspec.json.encode(Query(
                question=question, reply_to=inbox, top_k=5, generate=False)))
            with anyio.move_on_after(QUERY_TIMEOUT_S):
                while True:
                    event = self._decoder.decode((await sub.next_msg(timeout=None)).data)
                    if isinstance(event, Failed):
                        code = event.code.value
                        self.failed_codes[code] = self.failed_codes.get(code, 0) + 1
                        break
                    if isinstance(event, Sources):
                        ok = bool(event.sources) and not event.missing_shards
                    if isinstance(event, Done):
                        self.latencies_ms.append((time.perf_counter() - due) * 1000)
                        break
        finally:
            await sub.unsubscribe()
        if not ok:
            self.without_sources += 1


async def _ingest(nc: object, path: Path) -> tuple[JobProgress, float]:
    request = IngestRequest(path=str(path))
    started = time.perf_counter()
    await submit_job(nc, request)  # type: ignore[arg-type]
    seen = [p async for p in follow_job(nc, request.job_id, timeout_s=3600)]  # type: ignore[arg-type]
    last = seen[-1] if seen else None
    elapsed = time.perf_counter() - started
    assert last is not None
    if last.state != JobState.SUCCEEDED:
        raise SystemExit(f"ingest failed: {last.message}")
    return last, elapsed


def _chunk_texts(path: Path, settings: Settings) -> tuple[list[str], list[str]]:
    """The texts the ingestor will embed, in the order it sends them, and the chunks
    they are made of (what the index's payloads hold)."""
    cfg = settings.ingestor
    chunking = ChunkingConfig(chunk_tokens=cfg.chunk_tokens, overlap_tokens=cfg.overlap_tokens,
                              parent_tokens=cfg.parent_tokens)
    texts: list[str] = []
    chunks: list[str] = []
    for doc in read_file(path).documents:
        chunked = chunk_text(doc.text, chunking, markdown=doc.markdown)
        unique: dict[str, tuple[str, str]] = {}
        for c in chunked.chunks:
            text = embedded_text(c.text, doc.title, chunked.parent_of(c).headings) \
                if cfg.embed_context else c.text
            unique.setdefault(text, (text, c.text))
        texts.extend(t for t, _ in unique.values())
        chunks.extend(c for _, c in unique.values())
    return texts, chunks


def _raw(model: EmbeddingModel, batches: list[list[str]]) -> float:
    started = time.perf_counter()
    for batch in batches:
        model.embed(batch)
    return time.perf_counter() - started


async def run(docs: int, corpus: Path, with_queries: bool = False) -> dict[str, Any]:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    with tempfile.TemporaryDirectory(prefix="ragbus-bench-") as tmp:
        data = Path(tmp) / "corpus.jsonl"
        with corpus.open() as src, data.open("w") as dst:
            for i, line in enumerate(src):
                if i >= docs:
                    break
                dst.write(line)
        async with EmbeddedNats() as server:
            settings = Settings(nats=NatsSettings(url=server.url),
                                retriever=RetrieverSettings(data_dir=f"{tmp}/qdrant"),
                                ingestor=IngestorSettings(allowed_roots=[tmp]))
            size = settings.embedder.batch_size
            texts, chunk_texts = _chunk_texts(data, settings)
            batches = [texts[i:i + size] for i in range(0, len(texts), size)]
            model = EmbeddingModel.load(settings.embedder.model, batch_size=size)
            model.embed(texts[:8])  # warm-up, as the actor's model is warmed by its probe
            raw_s = _raw(model, batches[0::2])

            nc = await connect(settings.nats, name="bench-ingest")
            retriever = Retriever(settings)
            actors: list[Actor] = [Embedder(settings), retriever, Ingestor(settings)]
            if with_queries:
                actors.append(ContextTrimmer(settings))
            questions = [json.loads(line)["text"] for line in QUERIES.open()]
            during = QueryLoad(nc, questions)
            quiet = QueryLoad(nc, questions)
            async with anyio.create_task_group() as tg:
                for actor in actors:
                    await tg.start(actor.serve)
                if with_queries:
                    ingested = anyio.Event()

                    async def load() -> None:
                        store = retriever.stores["default"]
                        while store.dim is None or not await retriever.worker.run(  # noqa: ASYNC110
                                store.count):
                            await anyio.sleep(0.05)  # from the first indexed chunk on
                        await during.run(ingested)

                    async with anyio.create_task_group() as queries:
                        queries.start_soon(load)
                        first, first_s = await _ingest(nc, data)
                        ingested.set()
                    with anyio.fail_after(600):
                        while not retriever.optimized:  # noqa: ASYNC110 - a build may follow
                            await anyio.sleep(0.2)
                    await quiet.run(max(10.0, min(first_s, 60.0)))
                else:
                    first, first_s = await _ingest(nc, data)
                again, again_s = await _ingest(nc, data)
                store = retriever.stores["default"]
                page = await retriever.worker.run(store.scroll, filter=Filter(), limit=1_000_000)
                indexed = sorted(str(p.payload["text"]) for p in page.points)
                tg.cancel_scope.cancel()
            await nc.close()
            raw_s += _raw(model, batches[1::2])
    if indexed != sorted(chunk_texts):
        raise SystemExit("the indexed chunks differ from the raw baseline's texts")

    raw_rate = len(texts) / raw_s
    ragbus_rate = first.chunks_total / first_s
    queried: dict[str, Any] = {}
    if with_queries:
        queried = {
            "raw_runs_queries": False,
            "query_rate": QUERY_RATE,
            "queries_during_ingest": len(during.latencies_ms) + during.without_sources,
            "query_p50_during_ingest_ms": round(percentile(during.latencies_ms, 50), 2),
            "query_p99_during_ingest_ms": round(percentile(during.latencies_ms, 99), 2),
            "query_p50_quiet_ms": round(percentile(quiet.latencies_ms, 50), 2),
            "query_p99_quiet_ms": round(percentile(quiet.latencies_ms, 99), 2),
            "queries_without_sources": during.without_sources + quiet.without_sources,
            "failed_codes_during_ingest": during.failed_codes,
            "failed_codes_quiet": quiet.failed_codes,
        }
    return {
        "docs": first.docs_done,
        "chunks": first.chunks_total,
        "raw_chunks_per_s": round(raw_rate, 2),
        "ragbus_chunks_per_s": round(ragbus_rate, 2),
        "ratio": round(ragbus_rate / raw_rate, 3),
        "reingest_s": round(again_s, 3),
        "first_ingest_s": round(first_s, 2),
        "reingest_embeddings": again.embeddings_computed,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        **queried,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--with-queries", action="store_true",
                        help=f"ask {QUERY_RATE:g} questions a second during the ingest, and "
                        "as long again after it")
    args = parser.parse_args()
    if not args.corpus.is_file():
        raise SystemExit(f"corpus not found: {args.corpus} (see shared/data/beir-scifact)")
    print(dumps(anyio.run(run, args.docs, args.corpus, args.with_queries)))


if __name__ == "__main__":
    main()
