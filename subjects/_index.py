"""Changes to the vector index, applied only by the retriever that owns the store."""

from __future__ import annotations

from typing import Any

import msgspec

from ._base import Message, Name, Request

__all__ = ("IndexApplied", "IndexUpdate", "PayloadPatch", "PointUpsert", "SparseVector")

DEFAULT_COLLECTION = "default"


class SparseVector(msgspec.Struct, frozen=True, kw_only=True):
    indices: list[int]
    values: list[float]


class PointUpsert(msgspec.Struct, frozen=True, kw_only=True):
    """One chunk: ``id`` is a UUID derived from (doc id, chunk hash), so re-sending is harmless."""

    id: str
    vector: bytes  # float32 little-endian, ``dim`` values
    payload: dict[str, Any]
    sparse: SparseVector | None = None


class PayloadPatch(msgspec.Struct, frozen=True, kw_only=True):
    ids: list[str]
    payload: dict[str, Any]


class IndexUpdate(Request, frozen=True, kw_only=True):
    """Upserts, deletes and payload patches for one collection, applied in that order."""

    collection: Name = DEFAULT_COLLECTION
    model_id: str
    dim: int
    upserts: list[PointUpsert] = msgspec.field(default_factory=list)
    deletes: list[str] = msgspec.field(default_factory=list)
    patches: list[PayloadPatch] = msgspec.field(default_factory=list)


class IndexApplied(Message, frozen=True, kw_only=True):
    request_id: str
    upserted: int
    deleted: int
    patched: int
    points: int  # points in the collection afterwards
