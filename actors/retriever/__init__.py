"""The retriever actor: owns the vector index (qdrant-edge or a Qdrant server).

Also exported: the fusions (the one configured and those it was chosen among) and
the hit-to-source step the query path runs.
"""

from ._actor import Retriever
from ._fusion import collapse, convex, dbsf, fuse, rrf, weighted_rrf
from ._query import to_sources

__all__ = (
    "Retriever",
    "collapse",
    "convex",
    "dbsf",
    "fuse",
    "rrf",
    "to_sources",
    "weighted_rrf",
)
