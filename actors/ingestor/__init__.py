"""The ingestor actor: documents in, token-aware chunks out, only changes embedded.

Also exported: the readers and the chunker the actor runs, as plain functions.
"""

from ._actor import Ingestor
from ._chunking import ChunkingConfig, chunk_text
from ._readers import read_file

__all__ = (
    "ChunkingConfig",
    "Ingestor",
    "chunk_text",
    "read_file",
)
