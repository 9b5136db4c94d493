"""What the readers produce and how they are configured."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from ._read_errors import BadRecord

__all__ = (
    "DEFAULT_MAX_BYTES",
    "DocFormat",
    "ReadResult",
    "ReaderOptions",
    "RecordFields",
    "SourceDocument",
)

DocFormat = Literal["text", "markdown", "html", "json", "jsonl", "pdf"]

#: 10 MiB: far above any prose document, small enough that a stray dump, log or
#: dataset in a watched folder is refused instead of being read into memory.
DEFAULT_MAX_BYTES = 10 * 1024 * 1024


class SourceDocument(msgspec.Struct, frozen=True, kw_only=True):
    """One document to chunk; a record file yields many."""

    doc_id: str
    title: str
    #: what is chunked; for records the title is its first paragraph
    text: str
    source_path: str
    format: DocFormat
    metadata: dict[str, object] = msgspec.field(default_factory=dict)

    @property
    def markdown(self) -> bool:
        """Whether ``text`` uses ``#`` headings (HTML headings are rendered that way)."""
        return self.format in ("markdown", "html")


class ReadResult(msgspec.Struct, frozen=True, kw_only=True):
    documents: tuple[SourceDocument, ...]
    #: records skipped in a .json/.jsonl file whose other records were read
    bad_records: tuple[BadRecord, ...] = ()


class RecordFields(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where a JSON record keeps its id, title and text. The defaults read BEIR corpora.

    The first present field of ``id_fields`` and of ``title_fields`` is used;
    all present ``text_fields`` are joined, in this order, by blank lines. A
    record without an id gets ``<file doc id>#<position>``: stable as long as
    records are not reordered.
    """

    id_fields: tuple[str, ...] = ("_id", "id", "doc_id")
    title_fields: tuple[str, ...] = ("title",)
    text_fields: tuple[str, ...] = ("text", "content", "body")
    #: a field holding a JSON object copied into the document's metadata
    metadata_field: str | None = "metadata"


class ReaderOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    max_bytes: Annotated[int, Meta(ge=1)] = DEFAULT_MAX_BYTES
    records: RecordFields = msgspec.field(default_factory=RecordFields)
