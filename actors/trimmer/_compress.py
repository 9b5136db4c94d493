"""Contextual compression: keep the sentences of each hit that are about the question.

A 200-token chunk found by one relevant sentence carries a dozen others; sent
whole, they crowd better hits out of the budget. Each hit keeps its sentences
that score best against the question up to ``ratio`` of its tokens, in their
original order, so what remains still reads as the source wrote it.

Two relevance signals:

* :func:`lexical_scores` (the default): BM25 of the question's terms against each
  sentence, with document frequencies taken over the context's own sentences.
  Pure Python, ~1 ms for a top-10 context, no other actor involved.
* :func:`similarities`: cosine of embeddings from the embedder actor. Every
  sentence of every hit is a text to embed: hundreds of ms for a fresh top-10
  on two cores (sentence vectors are cached by the embedder, so only repeats are
  cheap). bench.quality measures both (cost, and whether the compressed
  context still points at the relevant document).

What a hit's text yields (its sentences; each sentence's terms and token count)
is cached by the text itself, per process: a chunk that answers many questions is
split, analysed and counted once. The selection is pure (:func:`compress` takes
the scores); the bus call that produces embedding scores is :func:`embed`,
which gives up (returns None) rather than hold the query past its own short
deadline: trimming without compression is still a valid answer.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache

import anyio
import numpy as np
from numpy.typing import NDArray

from ragbus.runtime import Context, RagbusError
from ragbus.runtime.text import analyze, count_tokens, split_sentences, truncate
from ragbus.subjects import Embed, Embedded, deadline_after

from ._trim import Node

__all__ = (
    "compress",
    "compress_node",
    "embed",
    "lexical_scores",
    "sentences",
    "similarities",
    "split",
)

# BM25's saturation and length normalisation, as the retriever's keyword half uses them
_K1 = 0.9
_B = 0.4

def sentences(text: str) -> list[str]:
    """``text`` cut into sentences, each stripped; none is empty (``ragbus.runtime.text``'s
    rules, shared with the chunker and the extractive answerer)."""
    return split_sentences(text)


@lru_cache(maxsize=4096)
def split(text: str) -> tuple[str, ...]:
    """:func:`sentences` of ``text``, cached by the text (hits repeat across questions)."""
    return tuple(sentences(text))


@lru_cache(maxsize=32768)
def _terms(sentence: str) -> tuple[str, ...]:
    return tuple(analyze(sentence))


@lru_cache(maxsize=32768)
def _tokens(sentence: str) -> int:
    return count_tokens(sentence)


def compress_node(parts: Sequence[str], scores: Sequence[float], max_tokens: int) -> str:
    """The sentences with the best ``scores`` that fit ``max_tokens``, in text order.

    Sentences are taken best first, skipping any that no longer fits, so a long
    sentence does not block shorter relevant ones. When none fits at all the best
    one is cut to the budget.
    """
    if not parts or max_tokens <= 0:
        return ""
    sizes = [_tokens(p) for p in parts]
    order = sorted(range(len(parts)), key=lambda i: -scores[i])
    chosen: list[int] = []
    used = 0
    for i in order:
        # each seam may cost a token of its own (a space that joins no word)
        cost = sizes[i] + (1 if chosen else 0)
        if used + cost <= max_tokens:
            chosen.append(i)
            used += cost
    if not chosen:
        return truncate(parts[order[0]], max_tokens)
    text = " ".join(parts[i] for i in sorted(chosen))
    # joining can merge or split a token at each seam: re-count, never trust the sum
    return text if count_tokens(text) <= max_tokens else truncate(text, max_tokens)


def compress(nodes: Sequence[Node], parts: Sequence[Sequence[str]],
             scores: Sequence[Sequence[float]], ratio: float, *,
             keep_below: int) -> list[Node]:
    """Each node cut to its best sentences, at most ``ratio`` of its tokens.

    Nodes of at most ``keep_below`` tokens are left whole: too small to be worth it.
    """
    out: list[Node] = []
    for node, node_parts, node_scores in zip(nodes, parts, scores, strict=True):
        if node.tokens <= keep_below:
            out.append(node)
            continue
        target = max(1, int(node.tokens * ratio))
        out.append(node.with_text(compress_node(node_parts, node_scores, target)))
    return out


def lexical_scores(question: str,
                   parts: Sequence[Sequence[str]]) -> list[list[float]]:
    """BM25 of ``question`` against each sentence of each node (``parts[node][sentence]``).

    The "documents" are the sentences and the "corpus" is the context itself: a
    question term found in every sentence says nothing about which to keep, one
    found in two says a lot. Terms are analysed as the keyword retrieval does
    (stemmed, stop words dropped), so a sentence matches the question the way its
    chunk did. A question term repeated counts once; a sentence without any
    question term scores 0, and ties keep the text's order (earlier first).
    """
    wanted = set(analyze(question))
    if not wanted:
        return [[0.0] * len(ps) for ps in parts]
    analysed = [[_terms(s) for s in ps] for ps in parts]
    terms = [[Counter(t for t in a if t in wanted) for a in ps] for ps in analysed]
    lengths = [[len(a) for a in ps] for ps in analysed]
    flat = [c for cs in terms for c in cs]
    if not flat:
        return [[] for _ in parts]
    n = len(flat)
    df = Counter(t for c in flat for t in c)
    idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}
    avg = max(1.0, sum(x for ls in lengths for x in ls) / n)
    out: list[list[float]] = []
    for cs, ls in zip(terms, lengths, strict=True):
        scores = []
        for counts, length in zip(cs, ls, strict=True):
            norm = _K1 * (1 - _B + _B * length / avg)
            scores.append(sum(idf[t] * tf * (_K1 + 1) / (tf + norm) for t, tf in counts.items()))
        out.append(scores)
    return out


def similarities(question: NDArray[np.float32],
                 vectors: NDArray[np.float32]) -> NDArray[np.float32]:
    """Cosine similarity of each row of ``vectors`` to ``question``."""
    q = question / max(float(np.linalg.norm(question)), 1e-12)
    norms = np.maximum(np.linalg.norm(vectors, axis=1), 1e-12)
    result: NDArray[np.float32] = (vectors @ q) / norms
    return result


async def embed(ctx: Context, texts: list[str], timeout: float) -> NDArray[np.float32] | None:
    """Vectors for ``texts`` from the embedder, or None if it did not answer in time."""
    seconds = min(timeout, ctx.remaining())
    # the embedder gets the same short deadline, so it does not work on past our giving up
    # bulk: a context's sentences are many texts; a lane="query" request is one question
    message = Embed(texts=texts, deadline=deadline_after(seconds), trace=ctx.trace, lane="bulk")
    with anyio.move_on_after(seconds):
        try:
            reply = await ctx.request(ctx.subjects.embed, message, Embedded)
        except RagbusError as exc:
            ctx.log.warning("trim.embed_failed", code=exc.code.value, error=exc.message)
            return None
        vectors: NDArray[np.float32] = np.frombuffer(reply.vectors, dtype="<f4").reshape(
            -1, reply.dim)
        if vectors.shape[0] != len(texts):
            ctx.log.warning("trim.embed_mismatch", sent=len(texts), got=vectors.shape[0])
            return None
        return vectors
    ctx.log.warning("trim.embed_timeout", timeout_s=timeout)
    return None
