"""Ingest throughput through the actors vs fastembed alone on the same chunk texts.

Runs the embedded server, embedder, retriever and ingestor in this process (as
``ragbus up`` does), ingests the first N BEIR SciFact abstracts and re-ingests
them unchanged. ``raw`` embeds the same chunk texts (read and chunked by the
same functions, in the same order, checked against what was indexed) with the
bare model, same batch size and threads: half of its batches before the ingest
and half after, so machine noise falls on both sides alike.

    python -m bench.ingest [--docs N] [--corpus PATH]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import anyio
import structlog

from bench._data import SCIFACT
from ragbus.actors.embedder import Embedder
from ragbus.actors.embedder._model import EmbeddingModel
from ragbus.actors.ingestor import Ingestor
from ragbus.actors.ingestor._chunking import ChunkingConfig, chunk_text
from ragbus.actors.ingestor._points import embedded_text
from ragbus.actors.ingestor._readers import read_file
from ragbus.actors.retriever import Retriever
from ragbus.actors.retriever.store import Filter
from ragbus.config import NatsSettings, RetrieverSettings, Settings
from ragbus.runtime import connect
from ragbus.runtime.cli import EmbeddedNats, follow_job, submit_job
from ragbus.subjects import IngestRequest, JobProgress, JobState

CORPUS = SCIFACT / "corpus.jsonl"


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


async def run(docs: int, corpus: Path) -> dict[str, float | int]:
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
                                retriever=RetrieverSettings(data_dir=f"{tmp}/qdrant"))
            size = settings.embedder.batch_size
            texts, chunk_texts = _chunk_texts(data, settings)
            batches = [texts[i:i + size] for i in range(0, len(texts), size)]
            model = EmbeddingModel.load(settings.embedder.model, batch_size=size)
            model.embed(texts[:8])  # warm-up, as the actor's model is warmed by its probe
            raw_s = _raw(model, batches[0::2])

            nc = await connect(settings.nats, name="bench-ingest")
            retriever = Retriever(settings)
            async with anyio.create_task_group() as tg:
                for actor in (Embedder(settings), retriever, Ingestor(settings)):
                    await tg.start(actor.serve)
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
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    args = parser.parse_args()
    if not args.corpus.is_file():
        raise SystemExit(f"corpus not found: {args.corpus} (see shared/data/beir-scifact)")
    print(json.dumps(anyio.run(run, args.docs, args.corpus)))


if __name__ == "__main__":
    main()
