"""Deterministic point ids and payloads, so every write is idempotent."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from ragbus.runtime.text import truncate

from ._chunking import Chunk, Parent

__all__ = ("chunk_payload", "embedded_text", "point_id")

#: cl100k tokens of title and heading trail put in front of a chunk when it is embedded
CONTEXT_TOKENS = 48

_NAMESPACE = uuid.UUID("5b0f3a52-2d7e-4d0e-9a52-726167627573")  # fixed forever


def point_id(collection: str, doc_id: str, chunk_sha256: str) -> str:
    """The same chunk of the same document always lands on the same point: a redelivered
    job overwrites what it wrote before instead of duplicating it."""
    return str(uuid.uuid5(_NAMESPACE, f"{collection}\x00{doc_id}\x00{chunk_sha256}"))


def chunk_payload(
    *,
    doc_id: str,
    title: str,
    source: str,
    chunk: Chunk,
    parent: Parent,
    version: int,
    tags: list[str],
    created_at: str,
    metadata: dict[str, Any],
) -> dict[str, Any]:
    return {
        "doc_id": doc_id,
        "title": title,
        "source": source,
        "text": chunk.text,
        "chunk_index": chunk.index,
        "chunk_sha256": chunk.sha256,
        "token_count": chunk.token_count,
        "parent_id": parent.sha256,
        "parent_text": parent.text,
        "headings": list(parent.headings),
        "version": version,
        "tags": tags,
        "deleted": False,
        "created_at": created_at,
        "metadata": metadata,
    }


def embedded_text(text: str, title: str, headings: Sequence[str] = ()) -> str:
    """What is embedded for a chunk: its document's title and heading trail, then the chunk.

    A chunk in the middle of a long document says what it says, but rarely what
    it is about ("Returns -1 on error" of which call?); the title and the
    headings above it do. Parts the chunk's first line starts with are left
    out (a document's first chunk starts with its title, a section's with its
    heading), so such a chunk is embedded exactly as before. The trail is capped
    at ``CONTEXT_TOKENS`` so the chunk itself still fits the model's 256 tokens.
    """
    first_line = text.lstrip("# \n").split("\n", 1)[0]
    parts: list[str] = []
    for part in (title, *headings):
        part = " ".join(part.lstrip("#").split())
        if part and not first_line.startswith(part) and part not in parts:
            parts.append(part)
    if not parts:
        return text
    return f"{truncate(' > '.join(parts), CONTEXT_TOKENS)}\n\n{text}"
