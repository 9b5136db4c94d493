"""The retriever actor: owns the vector index (qdrant-edge or a Qdrant server)."""

from ._actor import Retriever

__all__ = ("Retriever",)
