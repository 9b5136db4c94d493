"""Texts in, vectors out: the embedder's request and reply."""

from __future__ import annotations

from typing import Literal

from ._base import Message, Request

__all__ = ("Embed", "EmbedLane", "Embedded")

#: which line an embedding request waits in: see :class:`Embed`
EmbedLane = Literal["query", "bulk"]


class Embed(Request, frozen=True, kw_only=True):
    """Embed ``texts``. ``model``, when given, must be the model the embedder serves:
    vectors of different models are not comparable, so a mismatch is refused.

    ``lane``: ``"query"`` for a few short latency-critical texts (a question's
    vector): they run on a model instance of their own, so they never wait behind
    a bulk batch already running (32 chunks of 256 tokens take 1.5-2 s). A query
    request with more texts than ``embedder.query_lane_max_texts`` is served in
    bulk. ``"bulk"`` (the default, and what clients that send no lane get) is for
    everything else: ingest chunks, compression sentences.
    """

    texts: list[str]
    model: str | None = None
    lane: EmbedLane = "bulk"


class Embedded(Message, frozen=True, kw_only=True):
    """``vectors`` is ``len(texts) * dim`` little-endian float32 values, row-major
    (base64 in JSON): a quarter of the size of a JSON float list and decoded without parsing.
    The model id and dimension travel with every vector."""

    request_id: str
    model_id: str
    dim: int
    vectors: bytes
    cache_hits: int = 0
