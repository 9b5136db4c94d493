"""A backend-neutral filter: the questions the retriever asks, not Qdrant's condition tree.

Each backend translates it into its own classes, so neither engine's model leaks
into the actor. Soft-deleted points are excluded unless asked for, because a
retriever that forgets that flag would quote documents the user deleted.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

import msgspec

from ._errors import InvalidFilterError

__all__ = ("LIVE", "Filter")


class Filter(msgspec.Struct, frozen=True, kw_only=True):
    """Which points a search, scroll or count may see; all given constraints must hold.

    ``None`` means "no constraint". An empty tuple is an any-of over nothing, so it
    matches nothing: a caller that computed an empty allow-list gets no results
    rather than the whole collection.

    Versions are inclusive on both ends. Dates form a half-open interval,
    ``created_since <= created_at < created_before``, and must carry a timezone:
    payload dates are absolute instants, and a naive bound would silently mean UTC
    on one backend and local time in a test.
    """

    tags: tuple[str, ...] | None = None
    doc_ids: tuple[str, ...] | None = None
    version: int | None = None
    min_version: int | None = None
    max_version: int | None = None
    created_since: datetime | None = None
    created_before: datetime | None = None
    include_deleted: bool = False

    def __post_init__(self) -> None:
        lo, hi = self.min_version, self.max_version
        if lo is not None and hi is not None and lo > hi:
            raise InvalidFilterError(f"min_version={lo} > max_version={hi}: the range is empty")
        if self.version is not None and (
            (lo is not None and self.version < lo) or (hi is not None and self.version > hi)
        ):
            raise InvalidFilterError(
                f"version={self.version} lies outside [{lo}, {hi}]: drop one of the constraints"
            )
        for name in ("created_since", "created_before"):
            bound: datetime | None = getattr(self, name)
            if bound is not None and bound.utcoffset() is None:
                raise InvalidFilterError(
                    f"{name}={bound.isoformat()} has no timezone: "
                    f"pass an aware datetime, e.g. datetime(..., tzinfo=UTC)"
                )
        since, before = self.created_since, self.created_before
        if since is not None and before is not None and since >= before:
            raise InvalidFilterError(
                f"created_since={since.isoformat()} is not before "
                f"created_before={before.isoformat()}: the interval is empty"
            )


#: Every point that has not been soft-deleted: the default of every read.
LIVE: Final = Filter()
