"""The embedder actor: fastembed with an offline model, micro-batching, a shared cache.

Also exported: the model wrapper the actor runs (benchmarks compare it with bare
fastembed on the same texts).
"""

from ._actor import Embedder
from ._model import EmbeddingModel

__all__ = (
    "Embedder",
    "EmbeddingModel",
)
