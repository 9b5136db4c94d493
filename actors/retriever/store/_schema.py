"""The few names both backends agree on: vector names and the indexed payload fields.

Everything else in a payload is opaque to the store. These fields are indexed
when the collection is created, before any HNSW graph exists, because Qdrant only
links a graph for filtered search through indexes that existed when it was built.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = ("DENSE", "INDEXED_FIELDS", "SPARSE", "Field", "IndexKind")

#: Name of the dense embedding vector of every point.
DENSE: Final = "dense"
#: Name of the sparse keyword vector (BM25 term weights; IDF is applied by the engine).
SPARSE: Final = "bm25"


class Field(enum.StrEnum):
    """Payload keys the store indexes and :class:`Filter` understands."""

    DOC_ID = "doc_id"
    TAGS = "tags"
    DELETED = "deleted"
    VERSION = "version"
    #: RFC 3339 timestamp string with an offset, e.g. ``"2024-05-01T12:00:00Z"``.
    CREATED_AT = "created_at"


class IndexKind(enum.Enum):
    """Backend-neutral payload index kinds; each backend maps them to its own schema enum."""

    KEYWORD = "keyword"
    BOOL = "bool"
    INTEGER = "integer"
    DATETIME = "datetime"


INDEXED_FIELDS: Final[tuple[tuple[Field, IndexKind], ...]] = (
    (Field.DOC_ID, IndexKind.KEYWORD),
    (Field.TAGS, IndexKind.KEYWORD),
    (Field.DELETED, IndexKind.BOOL),
    (Field.VERSION, IndexKind.INTEGER),
    (Field.CREATED_AT, IndexKind.DATETIME),
)
