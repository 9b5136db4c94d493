"""The retriever actor: owns the vector index (qdrant-edge or a Qdrant server).

Also exported: the fusion and the hit-to-source step the query path runs.
"""

from ._actor import Retriever
from ._fusion import rrf
from ._query import to_sources

__all__ = (
    "Retriever",
    "rrf",
    "to_sources",
)
