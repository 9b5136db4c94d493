"""The embedder actor: fastembed with an offline model, micro-batching, a shared cache."""

from ._actor import Embedder

__all__ = ("Embedder",)
