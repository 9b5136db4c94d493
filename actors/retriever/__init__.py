"""The retriever actor: owns the vector index (qdrant-edge or a Qdrant server).

Also exported: the fusions (the one configured and those it was chosen among) and
the steps from fused hits to sources the query path runs.
"""

from ._actor import Retriever
from ._fusion import collapse, convex, dbsf, fuse, rrf, weighted_rrf
from ._query import settle, to_sources

__all__ = (
    "Retriever",
    "collapse",
    "convex",
    "dbsf",
    "fuse",
    "rrf",
    "settle",
    "to_sources",
    "weighted_rrf",
)
