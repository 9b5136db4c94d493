"""Reciprocal rank fusion: merging rankings whose scores are not comparable.

Cosine similarities and IDF-weighted BM25 scores live on different scales, so
hybrid retrieval fuses by rank (Cormack et al., 2009: score = sum 1/(k + rank),
k = 60). Dense hits from several shards share a scale (one model) and are merged
by score.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ragbus.subjects import SearchHit

__all__ = ("by_score", "rrf")


def by_score(lists: Iterable[Sequence[SearchHit]]) -> list[SearchHit]:
    best: dict[str, SearchHit] = {}
    for hits in lists:
        for hit in hits:
            if hit.chunk_id not in best or hit.score > best[hit.chunk_id].score:
                best[hit.chunk_id] = hit
    return sorted(best.values(), key=lambda h: h.score, reverse=True)


def rrf(rankings: Iterable[Sequence[SearchHit]], k: int = 60) -> list[SearchHit]:
    """Fused ranking; each hit's ``score`` becomes its RRF score."""
    scores: dict[str, float] = {}
    first: dict[str, SearchHit] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking, start=1):
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + 1.0 / (k + rank)
            first.setdefault(hit.chunk_id, hit)
    order = sorted(scores, key=lambda cid: scores[cid], reverse=True)
    return [SearchHit(chunk_id=cid, score=scores[cid], payload=first[cid].payload)
            for cid in order]
