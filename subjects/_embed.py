"""Texts in, vectors out: the embedder's request and reply."""

from __future__ import annotations

from ._base import Message, Request

__all__ = ("Embed", "Embedded")


class Embed(Request, frozen=True, kw_only=True):
    """Embed ``texts``. ``model``, when given, must be the model the embedder serves:
    vectors of different models are not comparable, so a mismatch is refused."""

    texts: list[str]
    model: str | None = None


class Embedded(Message, frozen=True, kw_only=True):
    """``vectors`` is ``len(texts) * dim`` little-endian float32 values, row-major
    (base64 in JSON): a quarter of the size of a JSON float list and decoded without parsing.
    The model id and dimension travel with every vector."""

    request_id: str
    model_id: str
    dim: int
    vectors: bytes
    cache_hits: int = 0
