"""The scores of one answer, as pure functions of what came back (no bus, no model).

Retrieval is scored on the *documents* of the sources, in the order the client got
them (a document named twice counts once, at its first place). Answers are scored
sentence by sentence: an answer's sentences are cut by ``runtime.text`` as the
chunker and the trimmer cut them, and a citation marker that opens a sentence
(``"… was found. [1] Then …"``: the extractive provider's layout) belongs to the
sentence before it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..text import split_sentences

__all__ = (
    "AnswerSentence",
    "answer_sentences",
    "citation_valid",
    "cited_share",
    "documents",
    "grounded_share",
    "is_refusal",
    "mean",
    "ndcg_at_10",
    "precision_at",
    "recall_at",
    "reciprocal_rank",
    "strip_citations",
)

_CITATION = re.compile(r"\[(\d{1,4})\]")
_LEADING_CITATIONS = re.compile(r"^(?:\s*\[\d{1,4}\])+[.,;:]?")


def documents(doc_ids: Iterable[str]) -> list[str]:
    """``doc_ids`` without repeats, in order of first appearance."""
    return list(dict.fromkeys(doc_ids))


def _relevant(relevant: Mapping[str, int]) -> set[str]:
    return {doc for doc, grade in relevant.items() if grade > 0}


def precision_at(ranked: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    """Relevant documents among the first ``k``, over ``k`` (missing places count as misses)."""
    wanted = _relevant(relevant)
    return sum(1 for doc in ranked[:k] if doc in wanted) / k


def recall_at(ranked: Sequence[str], relevant: Mapping[str, int], k: int) -> float | None:
    """Share of the relevant documents among the first ``k``; None when none is relevant."""
    wanted = _relevant(relevant)
    if not wanted:
        return None
    return len(wanted & set(ranked[:k])) / len(wanted)


def reciprocal_rank(ranked: Sequence[str], relevant: Mapping[str, int], k: int = 10) -> float:
    """1 / the place of the first relevant document among the first ``k``, else 0."""
    wanted = _relevant(relevant)
    for place, doc in enumerate(ranked[:k], start=1):
        if doc in wanted:
            return 1.0 / place
    return 0.0


def ndcg_at_10(ranked: Sequence[str], relevant: Mapping[str, int]) -> float:
    """nDCG@10 with linear gains (BEIR's, as pytrec_eval computes it)."""
    dcg = sum(relevant.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranked[:10]))
    ideal = sorted(relevant.values(), reverse=True)[:10]
    idcg = sum(rel / math.log2(i + 2) for i, rel in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


@dataclass(frozen=True, slots=True)
class AnswerSentence:
    """An answer sentence: its text without citation markers, and the passages it cites."""

    text: str
    cites: tuple[int, ...]


def strip_citations(text: str) -> str:
    """``text`` without ``[n]`` markers, spaces tidied (" [1]." becomes ".")."""
    bare = _CITATION.sub("", text)
    bare = re.sub(r"\s+([.,;:!?])", r"\1", bare)
    return " ".join(bare.split())


def answer_sentences(answer: str) -> list[AnswerSentence]:
    """The answer's sentences with what each cites; markers opening a sentence go to
    the one before it, and a sentence that is nothing but markers is no sentence."""
    pieces: list[tuple[str, list[int]]] = []
    for sentence in split_sentences(answer):
        lead = _LEADING_CITATIONS.match(sentence)
        if lead and pieces:
            pieces[-1][1].extend(int(n) for n in _CITATION.findall(lead.group()))
            sentence = sentence[lead.end():]
        cites = [int(n) for n in _CITATION.findall(sentence)]
        text = strip_citations(sentence)
        if any(c.isalnum() for c in text):
            pieces.append((text, cites))
        elif pieces:
            pieces[-1][1].extend(cites)
    return [AnswerSentence(text, tuple(dict.fromkeys(cites))) for text, cites in pieces]


def citation_valid(sentences: Sequence[AnswerSentence], passages: int) -> bool:
    """Every ``[n]`` names one of the ``passages`` the answer was given (1..passages)."""
    return all(1 <= n <= passages for s in sentences for n in s.cites)


def cited_share(sentences: Sequence[AnswerSentence]) -> float | None:
    """Share of sentences citing at least one passage; None for an answer without any."""
    if not sentences:
        return None
    return sum(1 for s in sentences if s.cites) / len(sentences)


def grounded_share(support: Sequence[float | None], threshold: float) -> float | None:
    """Share of sentences supported: ``support[i]`` is sentence i's best similarity to a
    sentence of a passage it cites (None: it cites no passage it was given, so nothing
    supports it)."""
    if not support:
        return None
    return sum(1 for s in support if s is not None and s >= threshold) / len(support)


def is_refusal(answer: str, phrases: Iterable[str]) -> bool:
    """An empty answer (nothing but citation markers counts as empty), or one saying one
    of ``phrases`` (case-insensitive; curly apostrophes read as straight ones)."""
    text = strip_citations(answer.replace("\u2019", "'").lower())
    if not any(c.isalnum() for c in text):
        return True
    return any(" ".join(p.lower().split()) in text for p in phrases)


def mean(values: Iterable[float | bool | None]) -> float | None:
    """Mean of the values that were measured (None skipped); None if none was."""
    got = [float(v) for v in values if v is not None]
    return sum(got) / len(got) if got else None
