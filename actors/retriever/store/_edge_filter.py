"""Translate :class:`Filter` into qdrant-edge's condition classes.

qdrant-edge 0.9 converts ``MatchValue(True)`` to the *integer* 1 (its binding tries
``int`` before ``bool``, and Python's bool is an int), which never matches a JSON
``true``: the soft-delete condition would silently match nothing. ``numpy.True_``
is not an int, so it reaches the engine as a real boolean.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, cast

import numpy as np
import qdrant_edge as qe

from ._filter import Filter
from ._schema import Field

if TYPE_CHECKING:
    from qdrant_edge import ConditionType

__all__ = ("to_edge_filter",)

#: Typed as the bool it is to the engine; the stub cannot express numpy's.
_TRUE: Final = cast(bool, np.True_)


def to_edge_filter(f: Filter) -> qe.Filter | None:
    """``None`` only when nothing is constrained: the engine then skips filtering entirely."""
    must: list[ConditionType] = []
    if f.tags is not None:
        must.append(qe.FieldCondition(key=Field.TAGS.value, match=qe.MatchAny(list(f.tags))))
    if f.doc_ids is not None:
        must.append(qe.FieldCondition(key=Field.DOC_ID.value, match=qe.MatchAny(list(f.doc_ids))))
    if f.version is not None:
        must.append(qe.FieldCondition(key=Field.VERSION.value, match=qe.MatchValue(f.version)))
    if f.min_version is not None or f.max_version is not None:
        versions = qe.RangeFloat(gte=f.min_version, lte=f.max_version)
        must.append(qe.FieldCondition(key=Field.VERSION.value, range=versions))
    if f.created_since is not None or f.created_before is not None:
        dates = qe.RangeDateTime(
            gte=None if f.created_since is None else f.created_since.isoformat(),
            lt=None if f.created_before is None else f.created_before.isoformat(),
        )
        must.append(qe.FieldCondition(key=Field.CREATED_AT.value, range=dates))
    must_not: list[ConditionType] = []
    if not f.include_deleted:
        must_not.append(qe.FieldCondition(key=Field.DELETED.value, match=qe.MatchValue(_TRUE)))
    if not must and not must_not:
        return None
    return qe.Filter(must=must or None, must_not=must_not or None)
