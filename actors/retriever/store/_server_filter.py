"""Translate :class:`Filter` into qdrant-client's model classes."""

from __future__ import annotations

from qdrant_client import models

from ._filter import Filter
from ._schema import Field

__all__ = ("to_server_filter",)


def to_server_filter(f: Filter) -> models.Filter | None:
    """``None`` only when nothing is constrained: the server then skips filtering entirely."""
    must: list[models.Condition] = []
    if f.tags is not None:
        must.append(
            models.FieldCondition(key=Field.TAGS.value, match=models.MatchAny(any=list(f.tags)))
        )
    if f.doc_ids is not None:
        must.append(
            models.FieldCondition(
                key=Field.DOC_ID.value, match=models.MatchAny(any=list(f.doc_ids))
            )
        )
    if f.version is not None:
        must.append(
            models.FieldCondition(key=Field.VERSION.value, match=models.MatchValue(value=f.version))
        )
    if f.min_version is not None or f.max_version is not None:
        versions = models.Range(gte=f.min_version, lte=f.max_version)
        must.append(models.FieldCondition(key=Field.VERSION.value, range=versions))
    if f.created_since is not None or f.created_before is not None:
        dates = models.DatetimeRange(gte=f.created_since, lt=f.created_before)
        must.append(models.FieldCondition(key=Field.CREATED_AT.value, range=dates))
    must_not: list[models.Condition] = []
    if not f.include_deleted:
        must_not.append(
            models.FieldCondition(key=Field.DELETED.value, match=models.MatchValue(value=True))
        )
    if not must and not must_not:
        return None
    return models.Filter(must=must or None, must_not=must_not or None)
