"""The ingestor actor: documents in, token-aware chunks out, only changes embedded.

Also exported: the readers, the chunker and what is embedded for a chunk, as the
actor runs them, as plain functions (benchmarks do the same work without the bus).
"""

from ._actor import Ingestor
from ._chunking import DEFAULT_CHUNKING, ChunkingConfig, chunk_text
from ._points import embedded_text
from ._readers import SUPPORTED_SUFFIXES, read_file, walk_folder

__all__ = (
    "DEFAULT_CHUNKING",
    "SUPPORTED_SUFFIXES",
    "ChunkingConfig",
    "Ingestor",
    "chunk_text",
    "embedded_text",
    "read_file",
    "walk_folder",
)
