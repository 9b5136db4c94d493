"""The ingestor actor: documents in, token-aware chunks out, only changes embedded."""

from ._actor import Ingestor

__all__ = ("Ingestor",)
