"""Contextual compression: keep the sentences of each hit that are about the question.

A 200-token chunk found by one relevant sentence carries a dozen others; sent
whole, they crowd better hits out of the budget. Each hit keeps its sentences
most similar to the question (cosine of embeddings from the embedder actor) up
to ``ratio`` of its tokens, in their original order, so what remains still
reads as the source wrote it.

The selection is pure (:func:`compress` takes the similarities); the bus call
that produces them is :func:`embed`, which gives up (returns None) rather than
hold the query past its own short deadline: trimming without compression is
still a valid answer.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import numpy as np
from numpy.typing import NDArray

from ragbus.runtime import Context, RagbusError
from ragbus.runtime.text import count_tokens, count_tokens_batch, split_sentences, truncate
from ragbus.subjects import Embed, Embedded, deadline_after

from ._trim import Node

__all__ = ("compress", "compress_node", "embed", "sentences", "similarities")

def sentences(text: str) -> list[str]:
    """``text`` cut into sentences, each stripped; none is empty (``ragbus.runtime.text``'s
    rules, shared with the chunker and the extractive answerer)."""
    return split_sentences(text)


def compress_node(parts: Sequence[str], scores: Sequence[float], max_tokens: int) -> str:
    """The sentences with the best ``scores`` that fit ``max_tokens``, in text order.

    Sentences are taken best first, skipping any that no longer fits, so a long
    sentence does not block shorter relevant ones. When none fits at all the best
    one is cut to the budget.
    """
    if not parts or max_tokens <= 0:
        return ""
    sizes = count_tokens_batch(list(parts))
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
    message = Embed(texts=texts, deadline=deadline_after(seconds), trace=ctx.trace)
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
