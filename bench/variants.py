"""Offline study of retrieval variants: fusion, keyword analysis, granularity, context.

Every variant is scored on a BEIR set with the parts the query path uses — the
ingestor's reader and chunker, the shared BM25 encoder, the retriever's fusion and
per-document functions, the real embedding model — while the vector store is
replaced by exact search in numpy (Qdrant's IDF formula for the keyword half), so
dozens of variants cost seconds once the vectors are cached (``bench._vectors``).
``bench.quality`` then confirms the chosen default through the actors.

    python -m bench.variants [--data DIR] [--embed chunks|context|parents] [--only TEXT]
    python -m bench.variants --table manpages.jsonl scifact.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bench._data import SCIFACT
from bench._vectors import VectorCache
from bench.quality import load_qrels, load_queries
from ragbus.actors.embedder import EmbeddingModel
from ragbus.actors.ingestor import DEFAULT_CHUNKING, chunk_text, embedded_text, read_file
from ragbus.runtime.text import BM25Encoder
from ragbus.subjects import SearchHit

__all__ = ("Corpus", "main")


@dataclass(frozen=True, slots=True)
class Unit:
    """One indexed text: a chunk (or a parent section) of a document."""

    doc_id: str
    title: str
    text: str
    parent: str  # the parent section's text
    parent_id: str
    headings: tuple[str, ...]


@dataclass
class Corpus:
    units: list[Unit]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]

    @classmethod
    def load(cls, data: Path) -> Corpus:
        qrels = load_qrels(data / "qrels" / "test.tsv")
        queries = load_queries(data / "queries.jsonl", qrels)
        result = read_file(data / "corpus.jsonl")
        units = []
        for doc in result.documents:
            chunked = chunk_text(doc.text, DEFAULT_CHUNKING, markdown=doc.markdown)
            seen: set[str] = set()
            for c in chunked.chunks:
                if c.sha256 in seen:
                    continue  # the ingestor indexes a repeated passage once
                seen.add(c.sha256)
                p = chunked.parent_of(c)
                units.append(Unit(doc_id=doc.doc_id, title=doc.title, text=c.text,
                                  parent=p.text, parent_id=p.sha256, headings=p.headings))
        return cls(units=units, queries=queries, qrels=qrels)


def context_text(unit: Unit) -> str:
    """The chunk with its title (and heading trail) in front, unless it starts with it."""

    return embedded_text(unit.text, unit.title, unit.headings)


class Keyword:
    """Exact BM25 over sparse vectors, scored as Qdrant's IDF modifier scores them."""

    def __init__(self, docs: Sequence[str], encoder: BM25Encoder,
                 analyze: Callable[[str], list[str]] | None = None) -> None:
        self.encoder = encoder
        self.n = len(docs)
        postings: dict[int, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
        for i, text in enumerate(docs):
            vec = encoder.document(text)
            for t, w in zip(vec.indices, vec.values, strict=True):
                postings[t][0].append(i)
                postings[t][1].append(w)
        self.postings = {t: (np.array(ix), np.array(ws)) for t, (ix, ws) in postings.items()}

    def idf(self, term: int) -> float:
        df = len(self.postings[term][0]) if term in self.postings else 0
        return math.log(1 + (self.n - df + 0.5) / (df + 0.5))

    def scores(self, query: str) -> NDArray[np.float64]:
        out = np.zeros(self.n)
        for t in self.encoder.query(query).indices:
            if t in self.postings:
                ix, ws = self.postings[t]
                out[ix] += self.idf(t) * ws
        return out


def top(scores: NDArray[Any], n: int) -> NDArray[np.int64]:
    k = min(n, len(scores))
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part], kind="stable")]


def hits(units: Sequence[Unit], scores: NDArray[Any], n: int, *,
         positive: bool = False) -> list[SearchHit]:
    out = []
    for i in top(scores, n):
        if positive and scores[i] <= 0:
            break  # a keyword search returns only points sharing a term
        u = units[i]
        out.append(SearchHit(chunk_id=str(i), score=float(scores[i]),
                             payload={"doc_id": u.doc_id, "parent_id": u.parent_id}))
    return out


def doc_ranking(ranked: Sequence[SearchHit], top_k: int = 10) -> list[str]:
    """What a client sees at ``top_k``: the doc ids of the first ``top_k`` sources."""
    docs: list[str] = []
    for h in ranked[:top_k]:
        d = str(h.payload["doc_id"])
        if d not in docs:
            docs.append(d)
    return docs


def table(files: Sequence[Path]) -> str:
    """A markdown table of the variants in ``files`` (this module's output, one per set)."""
    sets = []
    for path in files:
        rows = [json.loads(line) for line in path.read_text().splitlines()
                if line.startswith('{"variant"')]
        sets.append({(r["variant"], r["candidates"], r["per_doc"]): r["ndcg10"] for r in rows})
    keys = list(dict.fromkeys(k for scores in sets for k in scores))
    head = "| variant | candidates | per_doc | " + " | ".join(p.stem for p in files) + " |"
    lines = [head, "|---|---|---|" + "---|" * len(files)]
    for variant, n, per_doc in keys:
        cells = [f"{s[(variant, n, per_doc)]:.4f}" if (variant, n, per_doc) in s else ""
                 for s in sets]
        lines.append(f"| {variant} | {n} | {per_doc} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=SCIFACT)
    parser.add_argument("--embed", choices=("chunks", "context", "parents"), action="append",
                        default=[], help="only embed these texts (into the cache), then stop")
    parser.add_argument("--no-context", action="store_true",
                        help="skip the variants that need chunk vectors with title context")
    parser.add_argument("--only", default="", help="only variants whose name contains this")
    parser.add_argument("--table", type=Path, nargs="+",
                        help="print a markdown table of these outputs of this module")
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return
    corpus = Corpus.load(args.data)
    model = EmbeddingModel.load("all-MiniLM-L6-v2-int8")
    cache = VectorCache(model)
    print(json.dumps({"units": len(corpus.units), "queries": len(corpus.queries),
                      "cached": len(cache)}), flush=True)
    cache.get(list(corpus.queries.values()))
    texts: dict[str, Callable[[], list[str]]] = {
        "chunks": lambda: [u.text for u in corpus.units],
        "context": lambda: [context_text(u) for u in corpus.units],
        "parents": lambda: sorted({u.parent for u in corpus.units}),
    }
    for stage in args.embed:
        cache.get(texts[stage](), progress=True)
    if args.embed:
        return
    from bench._study import study

    for line in study(corpus, cache, context=not args.no_context, only=args.only):
        if line:
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
