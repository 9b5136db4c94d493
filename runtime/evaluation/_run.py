"""Asking a golden set through the running system and scoring what comes back.

Each question goes out as a ``Query`` on ``<prefix>.query`` through
:class:`~ragbus.runtime.Client` (the loop ``ragbus ask`` reads events with: one
terminal event, a deadline on every request); the sentences to compare are
embedded by the embedder over the bus (``Embed``), so the scores use the model the
system retrieves with. Questions are asked one at a time: a golden set measures
answers, not throughput, and one question at a time keeps the other traffic of a
shared system undisturbed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import msgspec
import numpy as np
from numpy.typing import NDArray

from ragbus.config import EvaluationSettings
from ragbus.subjects import (
    ContextNode,
    ContextReady,
    Done,
    Embed,
    Embedded,
    Failed,
    Query,
    Sources,
    Subjects,
    Token,
    deadline_after,
)

from ..client import Client
from ..connection import NATS
from ..text import split_sentences
from ._golden import GoldenQuestion, GoldenSetError
from ._judge import judge_answer
from ._scores import (
    answer_sentences,
    citation_valid,
    cited_share,
    documents,
    grounded_share,
    is_refusal,
    mean,
    ndcg_at_10,
    precision_at,
    recall_at,
    reciprocal_rank,
)

__all__ = ("METRICS", "QuestionResult", "Summary", "ask_one", "below", "compare", "evaluate",
           "read_results", "summarize")

#: the summary's metrics, in the order they are printed; each has a ``--min-…`` threshold
METRICS = ("precision_at_5", "recall_at_10", "mrr", "ndcg_at_10", "citation_valid",
           "cited_sentences", "grounded", "answer_relevance", "refusal_correct",
           "judge_grounded", "judge_relevance")


class QuestionResult(msgspec.Struct, frozen=True, kw_only=True, tag="question",
                     tag_field="type"):
    """One question's outcome (a line of the results file). A score is None where it
    does not apply: retrieval without judged documents, answer scores on a failed,
    refused or unanswerable question, refusal correctness on an answerable one."""

    id: str
    question: str
    answerable: bool
    answer: str = ""
    docs: list[str] = msgspec.field(default_factory=list)
    provider: str | None = None
    error: str | None = None
    refused: bool | None = None
    precision_at_5: float | None = None
    recall_at_10: float | None = None
    mrr: float | None = None
    ndcg_at_10: float | None = None
    citation_valid: bool | None = None
    cited_sentences: float | None = None
    grounded: float | None = None
    answer_relevance: float | None = None
    refusal_correct: bool | None = None
    #: an LLM judge's grades, 0 to 1 (``ragbus eval --judge``; None: not judged, or no grade)
    judge_grounded: float | None = None
    judge_relevance: float | None = None
    #: why the router cut the answer short (``Done.stopped``: "repetition" for a loop)
    stopped: str | None = None


class Summary(msgspec.Struct, frozen=True, kw_only=True, tag="summary", tag_field="type"):
    """The means over the questions each metric applies to (the last line of the file).

    ``false_refusals``: share of answerable questions answered with a refusal.
    """

    questions: int
    answerable: int
    unanswerable: int
    failed: int
    precision_at_5: float | None = None
    recall_at_10: float | None = None
    mrr: float | None = None
    ndcg_at_10: float | None = None
    citation_valid: float | None = None
    cited_sentences: float | None = None
    grounded: float | None = None
    answer_relevance: float | None = None
    refusal_correct: float | None = None
    judge_grounded: float | None = None
    judge_relevance: float | None = None
    false_refusals: float | None = None
    #: share of the answers the router cut at a repetition loop
    looped: float | None = None
    providers: dict[str, int] = msgspec.field(default_factory=dict)
    grounded_threshold: float | None = None


async def _vectors(client: Client, texts: list[str], timeout_s: float) -> NDArray[np.float32]:
    """Unit vectors of ``texts`` from the embedder, one row each."""
    reply = await client.request(client.subjects.embed, Embed(texts=texts), Embedded,
                                 timeout=timeout_s)
    vectors = np.frombuffer(reply.vectors, dtype="<f4").reshape(len(texts), reply.dim)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit: NDArray[np.float32] = (vectors / np.where(norms == 0, 1, norms)).astype(np.float32)
    return unit


async def _score_answer(client: Client, item: GoldenQuestion, answer: str,
                        context: list[ContextNode], settings: EvaluationSettings,
                        ) -> dict[str, float | bool | None]:
    sentences = answer_sentences(answer)
    valid = citation_valid(sentences, len(context))
    # the sentences of every passage cited, each embedded once
    passage_sentences: dict[int, list[str]] = {}
    for sentence in sentences:
        for n in sentence.cites:
            if 1 <= n <= len(context) and n not in passage_sentences:
                passage_sentences[n] = split_sentences(context[n - 1].text)
    pool = list(dict.fromkeys(s for group in passage_sentences.values() for s in group))
    bare = " ".join(s.text for s in sentences)
    texts = [item.question, bare or answer, *(s.text for s in sentences), *pool]
    vectors = await _vectors(client, texts, settings.embed_timeout_s)
    relevance = float(vectors[0] @ vectors[1])
    at = {text: 2 + len(sentences) + i for i, text in enumerate(pool)}
    support: list[float | None] = []
    for i, sentence in enumerate(sentences):
        rows = [at[s] for n in sentence.cites if n in passage_sentences
                for s in passage_sentences[n]]
        support.append(float(np.max(vectors[rows] @ vectors[2 + i])) if rows else None)
    return {"citation_valid": valid, "cited_sentences": cited_share(sentences),
            "grounded": grounded_share(support, settings.grounded_threshold),
            "answer_relevance": relevance}


async def ask_one(client: Client, item: GoldenQuestion, settings: EvaluationSettings, *,
                  provider: str | None = None, judge: str | None = None) -> QuestionResult:
    """Ask ``item`` through the query path and score the answer (graded by the ``judge``
    provider too, when one is named)."""
    nc = client.nc
    query = Query(question=item.question, top_k=settings.top_k, provider=provider,
                  reply_to=nc.new_inbox(), deadline=deadline_after(settings.timeout_s))
    ranked: list[str] = []
    context: list[ContextNode] = []
    text: list[str] = []
    done: Done | None = None
    error: str | None = None
    async with client.open_stream(client.subjects.query, query,
                                  hint="start the query path (is `ragbus up` running?)",
                                  ) as events:
        async for event in events:
            if isinstance(event, Sources):
                ranked = documents(s.doc_id for s in event.sources)
            elif isinstance(event, ContextReady):
                context = list(event.nodes)
            elif isinstance(event, Token):
                text.append(event.text)
            elif isinstance(event, Done):
                done = event
            elif isinstance(event, Failed):
                error = f"{event.code.value}: {event.message}"
            else:  # Cancelled: nobody here cancels, but an operator may
                error = "CANCELLED: the query was cancelled"
    answer = "".join(text).strip()
    scores: dict[str, float | bool | None] = {}
    if any(g > 0 for g in item.relevant.values()):
        scores.update(precision_at_5=precision_at(ranked, item.relevant, 5),
                      recall_at_10=recall_at(ranked, item.relevant, 10),
                      mrr=reciprocal_rank(ranked, item.relevant, 10),
                      ndcg_at_10=ndcg_at_10(ranked, item.relevant))
    refused: bool | None = None
    if error is None:
        refused = is_refusal(answer, settings.refusal_phrases)
        if not item.answerable:
            scores["refusal_correct"] = refused
        elif not refused:
            scores.update(await _score_answer(client, item, answer, context, settings))
            if judge is not None:
                scores["judge_grounded"], scores["judge_relevance"] = await judge_answer(
                    client, item.question, answer, context, provider=judge,
                    timeout_s=settings.timeout_s)
    return msgspec.convert(
        {"id": item.id, "question": item.question, "answerable": item.answerable,
         "answer": answer, "docs": ranked[:settings.top_k],
         "provider": done.provider if done else None, "error": error, "refused": refused,
         "stopped": done.stopped if done else None, **scores}, QuestionResult)


async def evaluate(nc: NATS, subjects: Subjects, questions: Sequence[GoldenQuestion],
                   settings: EvaluationSettings, *, provider: str | None = None,
                   judge: str | None = None) -> AsyncIterator[QuestionResult]:
    """Ask every question in turn; yield each one's result as soon as it is scored."""
    client = Client(nc, subjects, default_timeout_s=settings.timeout_s)
    for item in questions:
        yield await ask_one(client, item, settings, provider=provider, judge=judge)


def _share(values: list[bool]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(results: Sequence[QuestionResult], settings: EvaluationSettings) -> Summary:
    """The mean of every metric over the questions it applies to."""
    answerable = [r for r in results if r.answerable]
    return Summary(
        questions=len(results), answerable=len(answerable),
        unanswerable=len(results) - len(answerable),
        failed=sum(1 for r in results if r.error is not None),
        **{name: mean(getattr(r, name) for r in results) for name in METRICS},
        false_refusals=_share([bool(r.refused) for r in answerable if r.refused is not None]),
        looped=_share([r.stopped == "repetition" for r in results if r.error is None]),
        providers=dict(Counter(r.provider for r in results if r.provider)),
        grounded_threshold=settings.grounded_threshold,
    )


def below(summary: Summary, minimums: Mapping[str, float]) -> list[str]:
    """What misses its minimum, in words; a metric that could not be measured misses."""
    misses = []
    for name, minimum in minimums.items():
        value = getattr(summary, name)
        if value is None:
            misses.append(f"{name} was not measured (minimum {minimum:g})")
        elif value < minimum:
            misses.append(f"{name} {value:.4f} < {minimum:g}")
    return misses


def compare(a: Summary, b: Summary) -> dict[str, tuple[float | None, float | None,
                                                       float | None]]:
    """Per metric: (a, b, b - a); the difference is None where either is unmeasured."""
    rows: dict[str, tuple[float | None, float | None, float | None]] = {}
    for name in (*METRICS, "false_refusals"):
        x, y = getattr(a, name), getattr(b, name)
        rows[name] = (x, y, None if x is None or y is None else y - x)
    return rows


def read_results(path: str | Path) -> tuple[list[QuestionResult], Summary]:
    """A results file written by ``ragbus eval --out``: its questions and its summary."""
    path = Path(path)
    decoder: msgspec.json.Decoder[QuestionResult | Summary] = msgspec.json.Decoder(
        QuestionResult | Summary)
    results: list[QuestionResult] = []
    summary: Summary | None = None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise GoldenSetError(f"{path}: cannot read it: {exc}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = decoder.decode(line)
        except msgspec.DecodeError as exc:
            raise GoldenSetError(f"{path}:{number}: not a result line: {exc}") from None
        if isinstance(record, Summary):
            summary = record
        else:
            results.append(record)
    if summary is None:
        raise GoldenSetError(f"{path}: no summary line (was the run cut short?)")
    return results, summary
