"""Retrieval quality on a BEIR set through the real query path (SciFact by default).

Ingests the corpus through the actors (ingestor -> embedder -> retriever), then
asks each judged test query as a ``Query`` on the bus, once per retrieval mode and
once naming no mode (``default``: what a user gets without choosing), with
``top_k`` 10, and scores nDCG@10 on the documents of the sources returned, in
order. ``compression_ratio`` is the share of context tokens the context-trimmer
removes at top_k 10. ``--data DIR`` takes any BEIR layout (corpus.jsonl,
queries.jsonl, qrels/test.tsv; ids may be strings), e.g. the man pages set that
``python -m bench.manpages`` builds. ``--warm`` fills the embedder's cache with
vectors ``bench.variants`` computed before (same model, same texts).

Compression is then compared method by method (``trimmer.compression`` =
``off``, ``lexical``, ``embedding``, each through the real context-trimmer on the
same top-10 hits; ``random`` picks sentences at random at the same ratio, in
process with the trimmer's own functions): its cost (``trim_ms_p50_<method>``,
the trimmer's own timing; ``embedding`` twice, cold and then with every sentence
vector in the embedder's cache), the share of tokens it removes
(``compression_ratio_<method>``) and *support MRR* (``support_<method>``, per
judge in ``support_<method>_dense|bm25``): whether the compressed context still
ranks the relevant abstract first when re-scored against the question, by two
judges of different families so that neither method grades itself (see
bench/_support.py).

The published dense figure (0.6451 for all-MiniLM-L6-v2) embeds each document
once, title and text cut at 256 tokens. The real path chunks documents instead,
which changes the score (long abstracts are searched whole). ``--whole-docs``
also scores the published protocol with the same model object, as
``dense_ndcg10_whole_docs``: whether the model is faithful, apart from chunking.

    python -m bench.quality [--data DIR] [--queries N] [--whole-docs] [--warm] [--no-compression]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import random
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import msgspec
import numpy as np
import structlog
from msgspec.structs import replace

from bench._data import SCIFACT
from bench._jobs import ingested
from bench._stats import dumps, percentile
from bench._support import BM25Judge, Case, support
from ragbus.actors.embedder import Embedder, EmbeddingModel, text_key
from ragbus.actors.ingestor import Ingestor
from ragbus.actors.retriever import Retriever
from ragbus.actors.trimmer import (
    Budget,
    ContextTrimmer,
    compress,
    dedupe,
    fit,
    from_sources,
    sentences,
    shortlist,
)
from ragbus.config import (
    Compression,
    IngestorSettings,
    NatsSettings,
    RetrieverSettings,
    RuntimeSettings,
    Settings,
    TrimmerSettings,
)
from ragbus.runtime import Actor, connect
from ragbus.runtime.cli import EmbeddedNats
from ragbus.runtime.connection import NATS
from ragbus.runtime.evaluation import ndcg_at_10
from ragbus.runtime.text import count_tokens
from ragbus.subjects import (
    ContextReady,
    Done,
    Failed,
    IngestRequest,
    Query,
    QueryEvent,
    RetrievalMode,
    Source,
    Sources,
    Subjects,
)

DATA = SCIFACT
#: ``None``: the Query's default, what a user gets without choosing
MODES: tuple[tuple[str, RetrievalMode | None], ...] = (
    ("dense", "dense"), ("hybrid", "hybrid"), ("keyword", "keyword"), ("default", None))
#: sources asked per query: nDCG@10 is scored on the documents of exactly what a client
#: asking for ten sources is shown (a document named twice counts once, at its first place)
TOP_K = 10
METHODS: tuple[Compression, ...] = ("off", "lexical", "embedding")


def load_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    with path.open(newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            qrels[row["query-id"].strip()][row["corpus-id"].strip()] = int(row["score"])
    return dict(qrels)


def load_queries(path: Path, qrels: dict[str, dict[str, int]]) -> dict[str, str]:
    """The judged queries' texts, by id (ids are strings: BEIR sets use both kinds)."""
    queries = {}
    with path.open() as f:
        for line in f:
            record = json.loads(line)
            qid = str(record["_id"])
            if qid in qrels:
                queries[qid] = record["text"]
    return queries


def _query_order(qid: str) -> tuple[int, int | str]:
    """Numeric ids in numeric order (SciFact's "2" before "10"), then the others."""
    return (0, int(qid)) if qid.isdigit() else (1, qid)


@dataclass
class Answer:
    """What a retrieval-only query sent back."""

    docs: list[str] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)
    context: ContextReady | None = None
    trim_ms: float | None = None


async def _ask(nc: NATS, s: Subjects, question: str, mode: RetrievalMode | None,
               top_k: int, want_context: bool) -> Answer:
    """Ask on the bus; ``mode=None`` leaves ``retrieval`` out, as a user who does not choose."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    query = Query(question=question, reply_to=inbox, top_k=top_k, generate=False) \
        if mode is None else Query(question=question, reply_to=inbox, top_k=top_k,
                                   retrieval=mode, generate=False)
    await nc.publish(s.query, msgspec.json.encode(query))
    answer = Answer()
    decoder: msgspec.json.Decoder[QueryEvent] = msgspec.json.Decoder(QueryEvent)
    try:
        while True:
            event = decoder.decode((await sub.next_msg(timeout=60)).data)
            if isinstance(event, Failed):
                raise SystemExit(f"query failed: {event.code} {event.message}")
            if isinstance(event, Sources):
                answer.sources = event.sources
                for source in event.sources:
                    if source.doc_id not in answer.docs:
                        answer.docs.append(source.doc_id)
                if not want_context:
                    return answer
            if isinstance(event, ContextReady):
                answer.context = event
            if isinstance(event, Done):
                answer.trim_ms = event.timings_ms.get("trim")
                return answer
    finally:
        await sub.unsubscribe()


def random_context(question: str, sources: list[Source], cfg: TrimmerSettings,
                   rng: random.Random) -> list[tuple[str, str]]:
    """The trimmer's own steps with sentences scored at random: the floor of support MRR."""
    budget = Budget.from_settings(cfg, None)
    room = budget.context_for(count_tokens(question), 0)
    nodes = shortlist(dedupe(from_sources(sources), cfg.near_duplicate), room,
                      ratio=cfg.compression_ratio, min_nodes=cfg.min_nodes)
    parts = [sentences(n.text) if n.tokens > cfg.min_node_tokens else [] for n in nodes]
    scores = [[rng.random() for _ in ps] for ps in parts]
    nodes = compress(nodes, parts, scores, cfg.compression_ratio, keep_below=cfg.min_node_tokens)
    kept = fit(nodes, room, min_nodes=cfg.min_nodes, min_node_tokens=cfg.min_node_tokens)
    return [(n.doc_id, n.text) for n in kept]


def _corpus_texts(corpus: Path) -> list[str]:
    with corpus.open() as f:
        return [f"{r.get('title', '')} {r['text']}" for r in map(json.loads, f)]


def whole_document_rankings(model: EmbeddingModel, corpus: Path,
                            questions: dict[str, str]) -> dict[str, list[str]]:
    """Top-10 documents per question under the published protocol: one vector per
    document from ``title + " " + text`` (cut at the model's 256 tokens), cosine.

    What the published 0.6451 measures, with this checkout's model object: the
    check that the model is faithful, apart from what chunking adds or costs.
    """
    ids: list[str] = []
    texts: list[str] = []
    with corpus.open() as f:
        for line in f:
            record = json.loads(line)
            ids.append(record["_id"])
            texts.append(f"{record.get('title', '')} {record['text']}".strip())
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # less padding
    docs = np.zeros((len(texts), model.dim), dtype=np.float32)
    for start in range(0, len(order), 256):
        part = order[start:start + 256]
        docs[part] = model.embed([texts[i] for i in part])
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    qids = list(questions)
    vectors = model.embed([questions[q] for q in qids])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    top = np.argsort(-(vectors @ docs.T), axis=1)[:, :10]
    return {qid: [ids[j] for j in row] for qid, row in zip(qids, top, strict=True)}


async def warm_embeddings(nc: NATS, s: Subjects, model_id: str) -> int:
    """Put the vectors ``bench.variants`` cached for this model into the embedder's cache.

    The ingest then reads chunk vectors from the embedder's own cache (the path a
    re-ingest takes) instead of computing them again: the same model's vectors of
    the same texts, so the scores are those of a cold run, minutes sooner. Questions
    are embedded as usual.
    """
    from bench._vectors import cached_vectors

    kv = await nc.jetstream().key_value(s.bucket("embeddings"))
    prefix = text_key(model_id, "").rsplit(".", 1)[0]
    items = [(f"{prefix}.{sha}", vector.astype("<f4").tobytes())
             for sha, vector in cached_vectors(model_id)]
    for start in range(0, len(items), 512):
        await asyncio.gather(*(kv.put(k, v) for k, v in items[start:start + 512]))
    return len(items)


async def run(data: Path, limit: int | None, whole_docs: bool = False,
              warm: bool = False, compression: bool = True) -> dict[str, Any]:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    qrels = load_qrels(data / "qrels" / "test.tsv")
    queries = load_queries(data / "queries.jsonl", qrels)
    ids = sorted(queries, key=_query_order)[:limit]
    results: dict[str, Any] = {}
    contexts: dict[str, list[Answer]] = {}
    with tempfile.TemporaryDirectory(prefix="ragbus-quality-") as tmp:
        async with EmbeddedNats() as server:
            settings = Settings(
                nats=NatsSettings(url=server.url),
                runtime=RuntimeSettings(default_timeout_s=120),
                retriever=RetrieverSettings(data_dir=f"{tmp}/qdrant", cache=False,
                                            search_timeout_s=30, optimize_idle_s=1),
                ingestor=IngestorSettings(progress_interval_ms=1000,
                                          allowed_roots=[str(data)]),
            )
            nc = await connect(settings.nats, name="bench-quality")
            s = Subjects()
            retriever = Retriever(settings)
            embedder = Embedder(settings)
            actors: list[Actor] = [embedder, retriever, Ingestor(settings)]
            embedder_model: EmbeddingModel | None = None
            async with anyio.create_task_group() as tg:
                for actor in actors:
                    await tg.start(actor.serve)
                if warm:
                    assert embedder.model is not None
                    results["warmed"] = await warm_embeddings(nc, s, embedder.model.model_id)
                started = time.perf_counter()
                await ingested(nc, IngestRequest(path=str(data / "corpus.jsonl")),
                               timeout_s=7200)
                results["ingest_s"] = round(time.perf_counter() - started, 1)
                with anyio.fail_after(600):  # HNSW is built once writes are quiet
                    while not retriever.optimized:  # noqa: ASYNC110
                        await anyio.sleep(0.2)
                embedder_model = embedder.model
                for name, mode in MODES:
                    scores = []
                    for qid in ids:
                        answer = await _ask(nc, s, queries[qid], mode, TOP_K, False)
                        scores.append(ndcg_at_10(answer.docs, qrels[qid]))
                    results[f"{name}_ndcg10"] = round(sum(scores) / len(scores), 4)
                if whole_docs:
                    assert embedder.model is not None
                    model = embedder.model
                    ranked = await anyio.to_thread.run_sync(
                        lambda: whole_document_rankings(
                            model, data / "corpus.jsonl", {q: queries[q] for q in ids}))
                    results["whole"] = round(sum(ndcg_at_10(ranked[q], qrels[q])
                                                 for q in ids) / len(ids), 4)
                if compression:
                    # started only now: during the nDCG runs it would compress every
                    # top-30 hand-off nobody waits for, and load the embedder meanwhile
                    shipped = TrimmerSettings().compression_method
                    for method, label in ((shipped, "shipped"), *[(m, m) for m in METHODS]):
                        if label != "shipped" and method == shipped:
                            contexts[method] = contexts["shipped"]
                            continue
                        # embedding: waits for every sentence vector, however long it
                        # takes (the shipped 3 s give up under load), so its quality counts
                        trimmer = ContextTrimmer(replace(settings, trimmer=TrimmerSettings(
                            compression=method, embed_timeout_s=120)))
                        async with anyio.create_task_group() as each:
                            await each.start(trimmer.serve)
                            # embedding twice: cold, then with every sentence vector cached
                            for run in (("", "_warm") if method == "embedding" else ("",)):
                                got = [await _ask(nc, s, queries[q], "hybrid", 10, True)
                                       for q in ids]
                                contexts[label + run] = got
                            each.cancel_scope.cancel()
                tg.cancel_scope.cancel()
            await nc.close()
    out: dict[str, Any] = {
        "set": data.name,
        "dense_ndcg10": results["dense_ndcg10"],
        "hybrid_ndcg10": results["hybrid_ndcg10"],
        "keyword_ndcg10": results["keyword_ndcg10"],
        "default_ndcg10": results["default_ndcg10"],
        "queries": len(ids),
        "compression_ratio": _ratio(contexts["shipped"]) if "shipped" in contexts else None,
        "embeddings_warmed": results.get("warmed", 0),
        # --whole-docs: dense under the published protocol (no chunking), for the model check
        "dense_ndcg10_whole_docs": results.get("whole"),
    }
    if "shipped" in contexts:
        out["compression"] = TrimmerSettings().compression_method
        out.update(await anyio.to_thread.run_sync(
            _compare, contexts, [queries[q] for q in ids], [qrels[q] for q in ids],
            data / "corpus.jsonl", embedder_model))
    return out


def _ratio(answers: list[Answer]) -> float | None:
    ratios = [1 - a.context.trim_info.context_tokens_after
              / a.context.trim_info.context_tokens_before
              for a in answers if a.context and a.context.trim_info.context_tokens_before]
    return round(sum(ratios) / len(ratios), 3) if ratios else None


def _nodes(answer: Answer) -> list[tuple[str, str]]:
    context = answer.context
    return [(n.doc_id, n.text) for n in context.nodes] if context else []


def _compare(contexts: dict[str, list[Answer]], questions: list[str],
             qrels: list[dict[str, int]], corpus: Path,
             model: EmbeddingModel | None) -> dict[str, Any]:
    """Cost, ratio and support MRR of each compression method (see the module doc)."""
    assert model is not None
    off = contexts["off"]
    # judged queries whose relevant abstract is among the uncompressed top-10
    eligible = [i for i, a in enumerate(off)
                if any(qrels[i].get(src.doc_id, 0) > 0 for src in a.sources)]
    judge = BM25Judge(_corpus_texts(corpus))
    rng = random.Random(7)
    cfg = TrimmerSettings()
    out: dict[str, Any] = {"support_queries": len(eligible)}
    cases: dict[str, list[Case]] = {}
    for label, answers in contexts.items():
        if label == "shipped":
            continue
        cases[label] = [Case(questions[i], _nodes(answers[i]),
                             frozenset(d for d, r in qrels[i].items() if r > 0))
                        for i in eligible]
        trims = [a.trim_ms for a in answers if a.trim_ms is not None]
        out[f"trim_ms_p50_{label}"] = round(percentile(trims, 50), 2) if trims else None
        out[f"trim_ms_p99_{label}"] = round(percentile(trims, 99), 2) if trims else None
        if not label.endswith("_warm"):
            out[f"compression_ratio_{label}"] = _ratio(answers)
    cases["random"] = [Case(questions[i], random_context(questions[i], off[i].sources, cfg, rng),
                            frozenset(d for d, r in qrels[i].items() if r > 0))
                       for i in eligible]
    for label, group in cases.items():
        if label.endswith("_warm"):
            continue  # the same sentences as the cold run
        scored = support(group, model, judge)
        out[f"support_{label}"] = scored["mean"]
        out[f"support_{label}_dense"] = scored["dense"]
        out[f"support_{label}_bm25"] = scored["bm25"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--queries", type=int, default=None, help="score only the first N")
    parser.add_argument("--whole-docs", action="store_true",
                        help="also score dense retrieval under the published protocol: one "
                        "vector per whole document, no chunking (embeds the corpus again)")
    parser.add_argument("--warm", action="store_true",
                        help="fill the embedder's cache with the vectors bench.variants "
                        "cached (~/.cache/ragbus-bench/vectors) before ingesting")
    parser.add_argument("--no-compression", action="store_true",
                        help="skip compression_ratio (one more pass of every query through "
                        "the context-trimmer, which embeds their sentences)")
    args = parser.parse_args()
    if not (args.data / "corpus.jsonl").is_file():
        raise SystemExit(f"no BEIR set (corpus.jsonl, queries.jsonl, qrels/test.tsv) in "
                         f"{args.data}")
    print(dumps(anyio.run(run, args.data, args.queries, args.whole_docs, args.warm,
                               not args.no_compression)))


if __name__ == "__main__":
    main()
