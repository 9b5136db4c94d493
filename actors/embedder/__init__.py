"""The embedder actor: fastembed with an offline model, micro-batching, a shared cache.

Also exported: the model wrapper the actor runs (benchmarks compare it with bare
fastembed on the same texts) and the shared cache's key for a text's vector (a
benchmark fills that cache with vectors it computed before).
"""

from ._actor import Embedder
from ._cache import text_key
from ._model import EmbeddingModel

__all__ = (
    "Embedder",
    "EmbeddingModel",
    "text_key",
)
