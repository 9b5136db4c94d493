"""Engine knobs, kept out of the store's methods so call sites stay backend-neutral."""

from __future__ import annotations

from typing import Final

import msgspec

__all__ = ("EDGE_SEARCH", "SERVER_SEARCH", "EdgeTuning", "SearchTuning")


class SearchTuning(msgspec.Struct, frozen=True, kw_only=True):
    """Query-time parameters of dense searches.

    ``acorn`` makes filtered HNSW searches also walk neighbours of neighbours. With
    a tag filter matching ~20% of 2,000 points, qdrant-edge's recall@10 measured
    0.76-1.0 without it and 1.0 with it: values that common get no extra
    filterable-HNSW links, so the graph falls apart under the filter. It costs about
    2x latency and only applies when the filter keeps < 40% of the points.
    """

    hnsw_ef: int | None = None
    acorn: bool = False
    exact: bool = False


class EdgeTuning(msgspec.Struct, frozen=True, kw_only=True):
    """Build-time parameters of an embedded shard.

    ``search_threads`` defaults to 1 because qdrant-edge holds the GIL while it
    searches: more threads buy no concurrency for the one worker thread that calls
    it and only compete with the event loop. ``indexing_threshold_kb`` is the segment
    size above which ``optimize()`` builds HNSW (``None``: the engine's default,
    about 10 MB of vectors); below it, and for filters matching less than
    ``full_scan_threshold_kb`` of vectors, search is exact.
    """

    search_threads: int = 1
    hnsw_m: int = 16
    hnsw_ef_construct: int = 100
    full_scan_threshold_kb: int = 10_000
    indexing_threshold_kb: int | None = None


#: Edge default: ACORN on, see :class:`SearchTuning`.
EDGE_SEARCH: Final = SearchTuning(acorn=True)
#: Server default: the server's own defaults; ACORN needs Qdrant >= 1.16, opt in with it.
SERVER_SEARCH: Final = SearchTuning()
