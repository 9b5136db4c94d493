"""BM25 term weights as sparse vectors, shared by the ingestor (documents) and the
retriever (queries).

The engine applies IDF (Qdrant's ``Modifier.IDF`` on the sparse vector), so a
document vector carries only BM25's saturated, length-normalised term frequency
and a query vector carries 1 per term; their dot product, IDF-weighted by the
engine, is the BM25 score. Analysis follows Lucene's English analyzer as
pyserini uses it for BEIR (lower-case, its 33 stop words, possessive stripping,
Porter stemming), with pyserini's BEIR parameters k1=0.9, b=0.4 by default.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import snowballstemmer

from ragbus.subjects import SparseVector

__all__ = ("BM25Encoder", "analyze", "term_id")

# Lucene's EnglishAnalyzer default stop set
_STOP = frozenset((
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is",
    "it", "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there",
    "these", "they", "this", "to", "was", "will", "with",
))
_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*", re.UNICODE)
_stemmer = snowballstemmer.stemmer("porter")


@lru_cache(maxsize=200_000)
def _stem(word: str) -> str:
    # vocabularies repeat heavily: caching makes the pure-Python stemmer nearly free
    stem: str = _stemmer.stemWord(word)
    return stem


def analyze(text: str) -> list[str]:
    """The terms of ``text``: lower-cased, stop words dropped, possessives and suffixes
    stripped."""
    terms = []
    for word in _TOKEN.findall(text.lower()):
        if "'" in word:  # rare: keep the common case free of string edits
            if word.endswith("'s"):
                word = word[:-2]
            word = word.replace("'", "")
        if word and word not in _STOP:
            terms.append(_stem(word))
    return terms


def term_id(term: str) -> int:
    """A stable 31-bit id: the same on every host and run (Python's hash is salted)."""
    return zlib.crc32(term.encode("utf-8")) & 0x7FFFFFFF


@dataclass(frozen=True, slots=True)
class BM25Encoder:
    k1: float = 0.9
    b: float = 0.4
    # average chunk length in terms: chunks are capped at 200 cl100k tokens, which
    # leaves ~100 terms after stop words; the exact corpus mean matters little
    avg_len: float = 100.0

    def document(self, text: str) -> SparseVector:
        terms = analyze(text)
        counts = Counter(term_id(t) for t in terms)
        norm = self.k1 * (1 - self.b + self.b * len(terms) / self.avg_len)
        ids = sorted(counts)
        return SparseVector(indices=ids,
                            values=[counts[i] * (self.k1 + 1) / (counts[i] + norm) for i in ids])

    def query(self, text: str) -> SparseVector:
        ids = sorted({term_id(t) for t in analyze(text)})
        return SparseVector(indices=ids, values=[1.0] * len(ids))
