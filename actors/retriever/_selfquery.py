"""Self-query: filter terms typed into the question become filters.

``tag:x``, ``doc:y``, ``version:3``, ``after:2024-01-01`` and ``before:…`` are
lifted out of the text, so a user can narrow a search without a form and the
words ``tag:x`` do not pollute the embedding or the keyword match.
"""

from __future__ import annotations

import re

from ragbus.subjects import QueryFilters

__all__ = ("merge_filters", "self_query")

_TERM = re.compile(r"(?<!\S)(tag|doc|after|before|version):(\"[^\"]+\"|\S+)", re.IGNORECASE)


def self_query(question: str) -> tuple[str, QueryFilters | None]:
    """The question without its filter terms, and the filters they spelled."""
    tags: list[str] = []
    docs: list[str] = []
    after = before = None
    version = None
    for match in _TERM.finditer(question):
        key, value = match.group(1).lower(), match.group(2).strip('"')
        if key == "tag":
            tags.append(value)
        elif key == "doc":
            docs.append(value)
        elif key == "after":
            after = value
        elif key == "before":
            before = value
        elif value.isdigit():
            version = int(value)
    text = " ".join(_TERM.sub(" ", question).split())
    if not (tags or docs or after or before or version is not None):
        return question, None
    return text, QueryFilters(tags=tags or None, doc_ids=docs or None, after=after,
                              before=before, version=version)


def merge_filters(a: QueryFilters | None, b: QueryFilters | None) -> QueryFilters | None:
    """Both must hold: lists are unioned within a kind (any-of), bounds take the tighter."""
    if a is None or b is None:
        return a or b

    def union(x: list[str] | None, y: list[str] | None) -> list[str] | None:
        return sorted({*(x or []), *(y or [])}) if x is not None or y is not None else None

    def later(x: str | None, y: str | None) -> str | None:
        return max(x, y) if x and y else x or y  # ISO 8601 strings sort chronologically

    def earlier(x: str | None, y: str | None) -> str | None:
        return min(x, y) if x and y else x or y

    return QueryFilters(
        tags=union(a.tags, b.tags), doc_ids=union(a.doc_ids, b.doc_ids),
        version=a.version if a.version is not None else b.version,
        min_version=a.min_version if a.min_version is not None else b.min_version,
        max_version=a.max_version if a.max_version is not None else b.max_version,
        after=later(a.after, b.after), before=earlier(a.before, b.before),
    )
