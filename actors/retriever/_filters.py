"""From the wire's ``QueryFilters`` to the store's ``Filter``; bad values are BAD_REQUEST."""

from __future__ import annotations

from datetime import UTC, date, datetime

from ragbus.runtime import BadRequestError
from ragbus.subjects import QueryFilters

from .store import Filter, InvalidFilterError

__all__ = ("to_store_filter",)


def _instant(value: str, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        try:
            parsed = datetime.combine(date.fromisoformat(value), datetime.min.time())
        except ValueError:
            raise BadRequestError(f"{name}={value!r} is not an ISO 8601 date (e.g. 2024-01-01 or "
                             "2024-01-01T12:00:00Z)") from None
    # a bare date means midnight UTC: the same instant for every client
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def to_store_filter(filters: QueryFilters | None) -> Filter:
    if filters is None:
        return Filter()
    try:
        return Filter(
            tags=tuple(filters.tags) if filters.tags is not None else None,
            doc_ids=tuple(filters.doc_ids) if filters.doc_ids is not None else None,
            version=filters.version, min_version=filters.min_version,
            max_version=filters.max_version,
            created_since=_instant(filters.after, "after") if filters.after else None,
            created_before=_instant(filters.before, "before") if filters.before else None,
        )
    except InvalidFilterError as exc:
        raise BadRequestError(str(exc)) from None
