"""Deterministic point ids and payloads, so every write is idempotent."""

from __future__ import annotations

import uuid
from typing import Any

from ._chunking import Chunk, Parent

__all__ = ("chunk_payload", "point_id")

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
