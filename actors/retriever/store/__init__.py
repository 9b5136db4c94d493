"""The retriever's vector store: one small synchronous interface, two Qdrant backends.

:class:`EdgeStore` embeds qdrant-edge in the process (a shard directory, no
server); :class:`ServerStore` talks to a Qdrant server, or to qdrant-client's
in-memory mode in tests. Both speak :class:`Record`, :class:`Filter`, :class:`Hit`
and the wire's ``SparseVector`` (BM25 weights from ``ragbus.runtime.text``), never
the engines' own model classes, and raise only the :class:`StoreError` family on
purpose.

:class:`ServerStore` is imported on first use: qdrant-client takes over a second to
import, and a retriever on the embedded engine (the default) never needs it, while
every second of a restarting replica's start is a second it does not serve.
"""

from typing import TYPE_CHECKING

from ._edge import EdgeStore, build_command
from ._errors import (
    BackendError,
    CollectionMissingError,
    DimensionMismatchError,
    IncompatibleCollectionError,
    InvalidFilterError,
    InvalidPointError,
    StoreClosedError,
    StoreError,
    StoreLockedError,
    StoreUnavailableError,
)
from ._filter import LIVE, Filter
from ._schema import DENSE, SPARSE, Field
from ._tuning import EdgeTuning, SearchTuning
from ._types import Hit, Page, Record, StoredPoint, VectorStore

if TYPE_CHECKING:
    from ._server import ServerStore

__all__ = (
    "DENSE",
    "LIVE",
    "SPARSE",
    "BackendError",
    "CollectionMissingError",
    "DimensionMismatchError",
    "EdgeStore",
    "EdgeTuning",
    "Field",
    "Filter",
    "Hit",
    "IncompatibleCollectionError",
    "InvalidFilterError",
    "InvalidPointError",
    "Page",
    "Record",
    "SearchTuning",
    "ServerStore",
    "StoreClosedError",
    "StoreError",
    "StoreLockedError",
    "StoreUnavailableError",
    "StoredPoint",
    "VectorStore",
    "build_command",
)


def __getattr__(name: str) -> object:
    if name == "ServerStore":
        from ._server import ServerStore

        return ServerStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
