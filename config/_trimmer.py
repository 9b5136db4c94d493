"""Settings of the context-trimmer: token budgets, trimming, compression, memory.

Every size is in cl100k tokens, counted by ``runtime.text`` so the trimmer,
the chunker and the router agree on what a token is.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from ._section import Positive, PositiveInt, Section

__all__ = ("Compression", "TrimmerSettings")

#: how contextual compression scores sentences (see actors/trimmer/_compress.py)
Compression = Literal["lexical", "embedding", "off"]

_DAY = 24 * 3600.0

Fraction = Annotated[float, Meta(gt=0, le=1)]
Count = Annotated[int, Meta(ge=0)]


class TrimmerSettings(Section, frozen=True, kw_only=True):
    """How a query's hits become a prompt that fits the model.

    The defaults are the split that worked in production for a 4k-window model:
    3000 tokens in all, 1000 of them kept free for the answer, the question
    capped at 500 and the retrieved context at 1500. The prompt (everything but
    the answer) never exceeds ``total_tokens - response_tokens``; conversation
    memory is served first (a follow-up question makes no sense without it),
    then the context gets what is left, up to its own cap.

    ``model_context_tokens`` is the window of the smallest model the router may
    pick; when it is below ``total_tokens`` it becomes the total. A query that
    pins a provider uses that provider's window from ``provider_context_tokens``.

    ``near_duplicate`` is the word-trigram Jaccard similarity at which two hits
    count as the same text (the lower-scored one is dropped); 1.0 drops only
    identical texts.

    Contextual compression keeps, of each hit, the sentences that score best
    against the question, up to ``compression_ratio`` of its tokens. It runs when
    the context is over budget: over ``compress_above_tokens`` (a soft budget; a
    top-10 of 200-token chunks is ~1400 tokens and goes to the model at about half
    that), or over the room the hard budget leaves, whichever is smaller.
    ``compression`` picks the score: ``"lexical"`` (default) is BM25 of the
    question against each sentence, computed in the trimmer in about a
    millisecond; ``"embedding"`` is the cosine of sentence embeddings, one
    embedder call for every sentence of the hits (hundreds of ms for fresh hits
    on two cores; waiting at most ``embed_timeout_s``, without an answer the
    context is only trimmed); ``"off"`` only trims. bench.quality compares their
    cost and how well the compressed context still points at the relevant document
    (README, Benchmarks). The booleans of earlier versions still load: ``true`` is
    the default method, ``false`` is ``"off"``.

    Memory keeps the last ``memory_turns`` question/answer turns per session for
    ``memory_ttl_s`` after the session's last turn; turns beyond that, or beyond
    ``memory_tokens - brief_tokens``, fold into a running brief of at most
    ``brief_tokens`` written by the LLM through the router (waiting at most
    ``summarizer_timeout_s``), or cut from the turns' text when no LLM answers.
    """

    total_tokens: PositiveInt = 3000
    question_tokens: PositiveInt = 500
    response_tokens: PositiveInt = 1000
    context_tokens: PositiveInt = 1500
    model_context_tokens: PositiveInt | None = None
    provider_context_tokens: dict[str, PositiveInt] = msgspec.field(default_factory=dict)
    # trimming
    min_nodes: Count = 3
    # a hit cut below this is dropped instead: a 5-token fragment only confuses the model
    # (at least 4: one character can take 4 tokens, so a cut is never empty)
    min_node_tokens: Annotated[int, Meta(ge=4)] = 32
    near_duplicate: Fraction = 0.9
    tree_summarize_nodes: PositiveInt = 10
    # contextual compression
    compression: Compression | bool = "lexical"
    compress_above_tokens: PositiveInt = 1000
    compression_ratio: Fraction = 0.5
    embed_timeout_s: Positive = 3.0
    # conversation memory
    memory_turns: PositiveInt = 6
    memory_ttl_s: Positive = 30 * _DAY
    memory_tokens: PositiveInt = 600
    brief_tokens: PositiveInt = 200
    summarizer: bool = True
    summarizer_timeout_s: Positive = 8.0

    @property
    def compression_method(self) -> Compression:
        """``compression`` with the old booleans read as methods."""
        c = self.compression
        if isinstance(c, bool):
            return "lexical" if c else "off"
        return c

    def __post_init__(self) -> None:
        if isinstance(self.compression, bool):  # settings files of earlier versions
            msgspec.structs.force_setattr(self, "compression", self.compression_method)
        if self.brief_tokens > self.memory_tokens:
            raise ValueError(
                f"brief_tokens={self.brief_tokens} is above memory_tokens={self.memory_tokens}: "
                "the brief is part of the memory budget; lower it or raise memory_tokens"
            )
        windows = {"total_tokens": self.total_tokens}
        if self.model_context_tokens is not None:
            windows["model_context_tokens"] = self.model_context_tokens
        windows.update({f"provider_context_tokens.{name}": size
                        for name, size in self.provider_context_tokens.items()})
        for key, size in windows.items():
            if size <= self.response_tokens:
                raise ValueError(
                    f"{key}={size} leaves no room for a prompt once response_tokens="
                    f"{self.response_tokens} are reserved for the answer: raise it or lower "
                    "response_tokens"
                )
