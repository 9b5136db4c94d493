"""The variants ``bench.variants`` scores; one JSON line each.

A system maps a question to a ranked list of chunk hits (payload ``doc_id``); its
score is nDCG@10 over the doc ids of the first 10 hits, what a client asking
``top_k = 10`` is shown.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from ragbus.actors.retriever import collapse, convex, dbsf, rrf, weighted_rrf
from ragbus.runtime.evaluation import ndcg_at_10
from ragbus.runtime.text import BM25Encoder, analyze, term_id
from ragbus.subjects import SearchHit, SparseVector

if TYPE_CHECKING:
    from bench._vectors import VectorCache
    from bench.variants import Corpus

__all__ = ("study",)

System = Callable[[int], list[SearchHit]]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:(?:\.|::|->)[A-Za-z_][A-Za-z0-9_]*)*")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def analyze_code(text: str) -> list[str]:
    """``analyze`` plus whole identifiers: ``pthread_mutex_lock``, ``os.path.join`` and
    ``getElementById`` also count as one term each (and camelCase is split)."""
    terms = analyze(_CAMEL.sub(" ", text))
    for match in _IDENT.finditer(text):
        word = match.group()
        if "_" in word.strip("_") or "." in word or "::" in word or "->" in word \
                or _CAMEL.search(word):
            terms.append("=" + word.lower())
    return terms


class CodeEncoder(BM25Encoder):
    def document(self, text: str) -> SparseVector:
        terms = analyze_code(text)
        counts = Counter(term_id(t) for t in terms)
        norm = self.k1 * (1 - self.b + self.b * len(terms) / self.avg_len)
        ids = sorted(counts)
        return SparseVector(indices=ids,
                            values=[counts[i] * (self.k1 + 1) / (counts[i] + norm) for i in ids])

    def query(self, text: str) -> SparseVector:
        ids = sorted({term_id(t) for t in analyze_code(text)})
        return SparseVector(indices=ids, values=[1.0] * len(ids))


def _agreement(dense: list[SearchHit], keyword: list[SearchHit], n: int = 10) -> float:
    a = {h.payload["doc_id"] for h in dense[:n]}
    b = {h.payload["doc_id"] for h in keyword[:n]}
    return len(a & b) / n


def _by_doc(hits: list[SearchHit]) -> list[SearchHit]:
    """Each document once, at its best chunk, keyed by the document (for doc-level fusion)."""
    return [SearchHit(chunk_id=str(h.payload["doc_id"]), score=h.score, payload=h.payload)
            for h in collapse(hits, 1)]


def _doc_scores(hits: list[SearchHit], how: str) -> list[SearchHit]:
    """Rank documents by an aggregate of their chunks' scores; each keeps its best chunk."""
    best: dict[str, SearchHit] = {}
    scores: dict[str, list[float]] = {}
    for h in hits:
        d = str(h.payload["doc_id"])
        best.setdefault(d, h)
        scores.setdefault(d, []).append(h.score)
    def agg(values: list[float]) -> float:
        if how == "max":
            return values[0]
        if how == "decay":  # best + half the second + a quarter of the third
            return sum(v * 0.5 ** i for i, v in enumerate(values[:3]))
        if how == "sum":
            return sum(values)
        raise ValueError(how)
    order = sorted(best, key=lambda d: agg(scores[d]), reverse=True)
    return [SearchHit(chunk_id=best[d].chunk_id, score=agg(scores[d]),
                      payload=best[d].payload) for d in order]


def study(corpus: Corpus, cache: VectorCache, *, context: bool = True,
          only: str = "") -> Iterator[dict[str, Any]]:
    from bench.variants import Keyword, hits

    units = corpus.units
    qids = list(corpus.queries)
    questions = [corpus.queries[q] for q in qids]
    qv = cache.get(questions)
    chunk_v = cache.get([u.text for u in units])
    dense_scores = qv @ chunk_v.T
    from bench.variants import context_text

    ctx_scores = qv @ cache.get([context_text(u) for u in units]).T if context \
        else dense_scores
    kw = Keyword([u.text for u in units], BM25Encoder())
    kw_scores = [kw.scores(q) for q in questions]
    kw_title = Keyword([context_text(u) for u in units], BM25Encoder())
    kwt_scores = [kw_title.scores(q) for q in questions]
    code = Keyword([u.text for u in units], CodeEncoder())
    code_scores = [code.scores(q) for q in questions]

    # section-level keyword: BM25 over each parent section, every chunk gets its parent's
    parents = sorted({u.parent_id: u.parent for u in units}.items())
    parent_row = {pid: i for i, (pid, _) in enumerate(parents)}
    unit_parent = np.array([parent_row[u.parent_id] for u in units])
    kw_parent = Keyword([text for _, text in parents], BM25Encoder())
    kwp_scores = [kw_parent.scores(q)[unit_parent] for q in questions]

    # section-level vectors beside chunk vectors (when the parents were embedded): a
    # chunk scores the better of its own cosine and its parent section's
    parent_texts = [text for _, text in parents]
    section_scores = None
    if cache.has(parent_texts):
        section_scores = np.maximum(ctx_scores, (qv @ cache.get(parent_texts).T)[:, unit_parent])

    def score(system: System) -> float:
        total = 0.0
        for i, qid in enumerate(qids):
            docs: list[str] = []
            for h in system(i)[:10]:
                if h.payload["doc_id"] not in docs:
                    docs.append(str(h.payload["doc_id"]))
            total += ndcg_at_10(docs, corpus.qrels[qid])
        return round(total / len(qids), 4)

    def run(name: str, system: System, **info: Any) -> dict[str, Any]:
        if only and only not in name:
            return {}
        return {"variant": name, "ndcg10": score(system), **info}

    for n in (30, 100):
        @functools.cache
        def d(i: int, n: int = n) -> list[SearchHit]:
            return hits(units, dense_scores[i], n)

        @functools.cache
        def dc(i: int, n: int = n) -> list[SearchHit]:
            return hits(units, ctx_scores[i], n)

        @functools.cache
        def k(i: int, n: int = n) -> list[SearchHit]:
            return hits(units, kw_scores[i], n, positive=True)

        @functools.cache
        def kt(i: int, n: int = n) -> list[SearchHit]:
            return hits(units, kwt_scores[i], n, positive=True)

        @functools.cache
        def kc(i: int, n: int = n) -> list[SearchHit]:
            return hits(units, code_scores[i], n, positive=True)

        @functools.cache
        def kp(i: int, n: int = n) -> list[SearchHit]:
            return hits(units, kwp_scores[i], n, positive=True)

        @functools.cache
        def ds(i: int, n: int = n) -> list[SearchHit]:
            assert section_scores is not None
            return hits(units, section_scores[i], n)

        for per_doc in (0, 1):
            def c(f: System, p: int = per_doc) -> System:
                return lambda i: collapse(f(i), p)

            tag = {"candidates": n, "per_doc": per_doc}
            yield run("dense", c(d), **tag)
            yield run("dense+context", c(dc), **tag)
            if section_scores is not None:
                yield run("dense+context+sections", c(ds), **tag)

                def dsf(i: int) -> list[SearchHit]:
                    return dbsf(ds(i), kt(i), 0.7)
                yield run("dbsf0.7 dense+context+sections|keyword+context", c(dsf), **tag)
            yield run("keyword", c(k), **tag)
            yield run("keyword+context", c(kt), **tag)
            yield run("keyword-code", c(kc), **tag)
            yield run("keyword-section", c(kp), **tag)
            for dn, dl in (("dense", d), ("dense+context", dc)):
                for kn, kl in (("keyword", k), ("keyword+context", kt), ("keyword-code", kc),
                               ("keyword-section", kp)):
                    pair = f"{dn}|{kn}"

                    def rrf_pair(i: int, dl: System = dl, kl: System = kl) -> list[SearchHit]:
                        return rrf([dl(i), kl(i)])
                    yield run(f"rrf {pair}", c(rrf_pair), **tag)
                    for w in (0.5, 0.6, 0.7, 0.8, 0.9):
                        def cv(i: int, w: float = w, dl: System = dl,
                               kl: System = kl) -> list[SearchHit]:
                            return convex(dl(i), kl(i), w)
                        yield run(f"convex{w} {pair}", c(cv), **tag)
                    for w in (2 / 3, 0.8):
                        def wr(i: int, w: float = w, dl: System = dl,
                               kl: System = kl) -> list[SearchHit]:
                            return weighted_rrf([(w, dl(i)), (1 - w, kl(i))])
                        yield run(f"wrrf{w:.2f} {pair}", c(wr), **tag)

                    for w in (0.5, 0.6, 0.7, 0.8):
                        def db(i: int, w: float = w, dl: System = dl,
                               kl: System = kl) -> list[SearchHit]:
                            return dbsf(dl(i), kl(i), w)
                        yield run(f"dbsf{w} {pair}", c(db), **tag)

                    for w in (0.5, 0.7, 0.8):
                        def dcv(i: int, w: float = w, dl: System = dl,
                                kl: System = kl) -> list[SearchHit]:
                            return convex(_by_doc(dl(i)), _by_doc(kl(i)), w)
                        yield run(f"doc-level convex{w} {pair}", dcv, **tag)

                    def drrf(i: int, dl: System = dl, kl: System = kl) -> list[SearchHit]:
                        return rrf([_by_doc(dl(i)), _by_doc(kl(i))])
                    yield run(f"doc-level rrf {pair}", drrf, **tag)

                    for w in (0.5, 0.7):
                        def rr(i: int, w: float = w, dl: System = dl,
                               kl: System = kl) -> list[SearchHit]:
                            a = dl(i)
                            keep = {h.chunk_id for h in a}
                            return [h for h in convex(a, kl(i), w) if h.chunk_id in keep]
                        yield run(f"dense-rerank{w} {pair}", c(rr), **tag)

                    def adaptive(i: int, dl: System = dl, kl: System = kl) -> list[SearchHit]:
                        a, b = dl(i), kl(i)
                        w = 1 - 0.5 * _agreement(a, b)  # agree: 0.5/0.5; disagree: dense
                        return convex(a, b, w)
                    yield run(f"adaptive {pair}", c(adaptive), **tag)
            # a useless keyword list: another question's (how much can fusion cost at worst?)
            def noise(i: int, n: int = n) -> list[SearchHit]:
                return k((i + 1) % len(qids), n)

            for dn, dl in (("dense", d), ("dense+context", dc)):
                def rn(i: int, dl: System = dl) -> list[SearchHit]:
                    return rrf([dl(i), noise(i)])
                yield run(f"noise: rrf {dn}|unrelated keyword list", c(rn), **tag)
                for name, f in (("convex", convex), ("dbsf", dbsf)):
                    for w in (0.5, 0.6, 0.7, 0.8):
                        def fn(i: int, w: float = w, f: Any = f,
                               dl: System = dl) -> list[SearchHit]:
                            result: list[SearchHit] = f(dl(i), noise(i), w)
                            return result
                        yield run(f"noise: {name}{w} {dn}|unrelated keyword list", c(fn),
                                  **tag)
            for how in ("decay", "sum"):
                def agg(i: int, how: str = how) -> list[SearchHit]:
                    return _doc_scores(convex(dc(i), k(i), 0.7), how)
                yield run(f"convex0.7 dense+context|keyword doc-{how}", agg, **tag)
