"""Fitting retrieved hits into a token budget: pure functions, no bus.

The rules, in order:

1. A hit widened to its parent section (``metadata.parent_text``) is used as
   that section; empty hits are skipped; hits are ranked by score, best first.
2. Near-duplicates are dropped (word-trigram Jaccard at or above the
   threshold), keeping the better-scored copy: a second copy of a paragraph
   costs tokens and adds nothing.
3. The lowest-ranked hits are dropped first; hits are kept in rank order while
   they fit, and the last kept one is cut to fill what is left.
4. At least ``min_nodes`` hits survive unless the budget cannot hold that many
   fragments of ``min_node_tokens``: when the best hits are so long that fewer
   would survive, the budget is shared among the best ``min_nodes`` and the
   longest are cut to their share. Variety beats one enormous hit.

Counts are re-taken after every cut (BPE counts are not additive), so the
result is within budget by construction, not by arithmetic.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Literal

from ragbus.runtime.text import count_tokens, count_tokens_batch, truncate
from ragbus.subjects import ContextNode, Source

__all__ = (
    "Mode",
    "Node",
    "context_tokens",
    "dedupe",
    "fit",
    "from_sources",
    "response_mode",
    "shortlist",
    "similarity",
)

Mode = Literal["compact", "tree_summarize"]

_WORD = re.compile(r"\w+")
_SHINGLE = 3


@dataclass(frozen=True, slots=True)
class Node:
    """A hit as the trimmer works on it: its text and that text's token count."""

    chunk_id: str
    doc_id: str
    text: str
    score: float
    tokens: int
    title: str | None = None
    source: str | None = None

    def with_text(self, text: str) -> Node:
        return replace(self, text=text, tokens=count_tokens(text))

    def cut(self, max_tokens: int) -> Node:
        """The node's text cut to at most ``max_tokens`` (a prefix of it)."""
        if self.tokens <= max_tokens:
            return self
        return self.with_text(truncate(self.text, max_tokens))

    def to_context(self) -> ContextNode:
        return ContextNode(chunk_id=self.chunk_id, doc_id=self.doc_id, text=self.text,
                           score=self.score, title=self.title, source=self.source)


def from_sources(sources: Sequence[Source]) -> list[Node]:
    """Nodes for the hits, best first (stable for equal scores), empty ones skipped."""
    picked: list[tuple[Source, str]] = []
    for src in sources:
        parent = src.metadata.get("parent_text")
        text = parent if isinstance(parent, str) and parent.strip() else src.text
        if text.strip():
            picked.append((src, text))
    counts = count_tokens_batch([text for _, text in picked])
    nodes = []
    for (src, text), tokens in zip(picked, counts, strict=True):
        origin = src.metadata.get("source")
        nodes.append(Node(chunk_id=src.chunk_id, doc_id=src.doc_id, text=text, score=src.score,
                          tokens=tokens, title=src.title,
                          source=origin if isinstance(origin, str) else None))
    nodes.sort(key=lambda n: -n.score)
    return nodes


def context_tokens(nodes: Sequence[Node]) -> int:
    return sum(n.tokens for n in nodes)


@lru_cache(maxsize=1024)  # hits repeat across questions: each text is shingled once
def _shingles(text: str) -> frozenset[tuple[str, ...]]:
    words = _WORD.findall(text.casefold())
    n = min(_SHINGLE, len(words))
    return frozenset(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def _jaccard(a: frozenset[tuple[str, ...]], b: frozenset[tuple[str, ...]]) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


def similarity(a: str, b: str) -> float:
    """Jaccard similarity of the two texts' word trigrams, case-insensitive (1.0 for
    texts equal up to whitespace, even without words)."""
    if " ".join(a.split()) == " ".join(b.split()):
        return 1.0
    return _jaccard(_shingles(a), _shingles(b))


def dedupe(nodes: Iterable[Node], threshold: float) -> Iterator[Node]:
    """``nodes`` without repeats: a node is dropped when an earlier (better) kept node
    has the same chunk id, the same text, or a similarity of at least ``threshold``.

    Lazy, so a consumer that has enough (:func:`shortlist`) stops the quadratic
    comparison early: a message may carry hundreds of hits, a prompt holds a dozen.
    """
    kept: list[tuple[str, frozenset[tuple[str, ...]]]] = []
    ids: set[str] = set()
    for node in nodes:
        flat = " ".join(node.text.split())
        grams = _shingles(node.text)
        if node.chunk_id in ids or any(
            flat == k_flat or _jaccard(grams, k_grams) >= threshold for k_flat, k_grams in kept
        ):
            continue
        kept.append((flat, grams))
        ids.add(node.chunk_id)
        yield node


def fit(nodes: Sequence[Node], budget: int, *, min_nodes: int,
        min_node_tokens: int) -> list[Node]:
    """The best prefix of ``nodes`` that fits ``budget`` tokens (see the module rules).

    ``min_node_tokens`` must be at least 4 (the most tokens one character can take),
    so a cut is never empty.
    """
    if budget <= 0 or not nodes:
        return []
    kept = _fill(nodes, budget, min_node_tokens)
    want = min(min_nodes, len(nodes))
    if len(kept) >= want:
        return kept
    return _share(nodes[:want], budget, min_node_tokens)


def _fill(nodes: Sequence[Node], budget: int, min_node_tokens: int) -> list[Node]:
    kept: list[Node] = []
    used = 0
    for node in nodes:
        room = budget - used
        if node.tokens <= room:
            kept.append(node)
            used += node.tokens
            continue
        if room >= min_node_tokens:
            kept.append(node.cut(room))
        break
    return kept


def _share(top: Sequence[Node], budget: int, min_node_tokens: int) -> list[Node]:
    """Cut the best ``len(top)`` nodes so all of them fit, the longest cut the most.

    Water-filling: in order of length, each node takes the smaller of its size and
    an equal share of what is left. Fewer nodes are kept when the budget cannot
    give each at least ``min(size, min_node_tokens)``.
    """
    k = len(top)
    while k and sum(min(n.tokens, min_node_tokens) for n in top[:k]) > budget:
        k -= 1
    alloc = [0] * k
    remaining = budget
    for j, i in enumerate(sorted(range(k), key=lambda i: top[i].tokens)):
        alloc[i] = min(top[i].tokens, remaining // (k - j))
        remaining -= alloc[i]
    return [node.cut(alloc[i]) for i, node in enumerate(top[:k])]


def shortlist(nodes: Iterable[Node], budget: int, *, ratio: float,
              min_nodes: int) -> list[Node]:
    """The prefix that could fit ``budget`` once compressed to ``ratio`` (1.0: as is).

    What cannot make it into the context is not worth comparing, embedding or
    cutting; the first node that overflows is kept because it may be cut, and
    ``min_nodes`` are always kept for :func:`fit` to share the budget among.
    """
    out: list[Node] = []
    used = 0
    for node in nodes:
        if used > budget and len(out) >= min_nodes:
            break
        out.append(node)
        used += math.ceil(node.tokens * ratio)
    return out


def response_mode(nodes: int, tree_summarize_above: int) -> Mode:
    """``tree_summarize`` when too many nodes survive to answer from in one pass."""
    return "tree_summarize" if nodes > tree_summarize_above else "compact"
