"""Does a compressed context still point at the relevant document? (bench.quality)

SciFact's qrels name the abstract that supports or refutes each claim, not the
sentence, so compression cannot be scored against a gold sentence. What can be
scored: of the hits the retriever returned for a judged query, is the relevant
abstract still the one a reader would pick *from the compressed text*? For each
judged query whose relevant document is among the uncompressed top-10, every
node of the context that reaches the model is re-scored against the question,
and the score is the reciprocal rank of the first node from a relevant document
(0 when compression or the budget dropped it): *support MRR*.

The re-scoring must not be the method that chose the sentences, or that method
wins by construction. Two judges are used, one of each family: ``dense`` (the
embedding model's cosine of question and node text: the family of
``compression = "embedding"``) and ``bm25`` (BM25 with the whole corpus's document
frequencies: the family of ``"lexical"``, but with other statistics than the
trimmer's context-local ones). ``support`` is their mean; each method's figure
from the *other* family's judge is the one free of self-preference. Two
references bound the scale: the context uncompressed (``off``: only trimmed to
the budget) and the same compression ratio with sentences picked at random
(``random``): a method worth its cost lands near ``off`` and well above
``random``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ragbus.actors.embedder import EmbeddingModel
from ragbus.runtime.text import analyze

__all__ = ("BM25Judge", "Case", "reciprocal_rank", "support")


@dataclass(frozen=True, slots=True)
class Case:
    """One judged query's context as it reached the model: (doc_id, text) per node."""

    question: str
    nodes: list[tuple[str, str]]
    relevant: frozenset[str]


class BM25Judge:
    """BM25 (k1 0.9, b 0.4) with document frequencies and mean length of a corpus."""

    def __init__(self, documents: Iterable[str], k1: float = 0.9, b: float = 0.4) -> None:
        df: Counter[str] = Counter()
        total = 0
        n = 0
        for text in documents:
            terms = analyze(text)
            df.update(set(terms))
            total += len(terms)
            n += 1
        self._idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}
        self._unseen = math.log(1 + (n + 0.5) / 0.5)
        self._avg = total / max(1, n)
        self._k1, self._b = k1, b

    def scores(self, question: str, texts: Sequence[str]) -> list[float]:
        wanted = set(analyze(question))
        out = []
        for text in texts:
            terms = analyze(text)
            counts = Counter(t for t in terms if t in wanted)
            norm = self._k1 * (1 - self._b + self._b * len(terms) / self._avg)
            out.append(sum(self._idf.get(t, self._unseen) * tf * (self._k1 + 1) / (tf + norm)
                           for t, tf in counts.items()))
        return out


def reciprocal_rank(scores: Sequence[float], relevant: Sequence[bool]) -> float:
    """1/rank of the best-scored relevant node (ties count against it), 0 if none."""
    best = max((s for s, r in zip(scores, relevant, strict=True) if r), default=None)
    if best is None:
        return 0.0
    return 1.0 / (1 + sum(1 for s, r in zip(scores, relevant, strict=True) if not r and s >= best))


def support(cases: Sequence[Case], model: EmbeddingModel,
            bm25: BM25Judge) -> dict[str, float]:
    """Mean support MRR of ``cases`` under each judge, and their mean."""
    dense_rr: list[float] = []
    bm25_rr: list[float] = []
    for case in cases:
        texts = [t for _, t in case.nodes]
        relevant = [d in case.relevant for d, _ in case.nodes]
        if not texts:
            dense_rr.append(0.0)
            bm25_rr.append(0.0)
            continue
        vectors = model.embed([case.question, *texts])
        cosines: list[float] = (vectors[1:] @ vectors[0]).tolist()
        dense_rr.append(reciprocal_rank(cosines, relevant))
        bm25_rr.append(reciprocal_rank(bm25.scores(case.question, texts), relevant))
    dense, lexical = float(np.mean(dense_rr)), float(np.mean(bm25_rr))
    return {"dense": round(dense, 4), "bm25": round(lexical, 4),
            "mean": round((dense + lexical) / 2, 4)}
