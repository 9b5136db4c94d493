"""Why the store refused: one class per thing the caller can act on.

The hierarchy is flat on purpose: every class derives from :class:`StoreError`
directly, so the actor maps each one to one wire error code without ordering
``except`` clauses by depth. Each message says what to do, not only what broke.
"""

from __future__ import annotations

__all__ = (
    "BackendError",
    "CollectionMissingError",
    "DimensionMismatchError",
    "IncompatibleCollectionError",
    "InvalidFilterError",
    "InvalidPointError",
    "StoreClosedError",
    "StoreError",
    "StoreLockedError",
    "StoreUnavailableError",
)


class StoreError(Exception):
    """Base class: anything a :class:`~actors.retriever.store.VectorStore` raises on purpose."""


class DimensionMismatchError(StoreError):
    """The collection holds vectors of another size than the embedder produces.

    Raised by ``ensure_collection`` before any write, because mixing sizes cannot be
    repaired later: the fix is to re-ingest into a new collection (or path).
    """

    def __init__(self, where: str, existing: int, wanted: int) -> None:
        self.where = where
        self.existing = existing
        self.wanted = wanted
        super().__init__(
            f"{where} holds {existing}-dimensional vectors but {wanted} were asked for: "
            f"the embedding model changed. Point the store at a new collection or path and "
            f"re-ingest, or delete {where} if its data is disposable."
        )


class IncompatibleCollectionError(StoreError):
    """The collection exists but was not created by this store (distance, vector names...)."""


class CollectionMissingError(StoreError):
    """An operation ran before ``ensure_collection`` created the collection."""


class StoreLockedError(StoreError):
    """An embedded store directory is already open: the engine allows one opener."""


class StoreUnavailableError(StoreError):
    """The Qdrant server could not be reached; retrying later may succeed."""


class StoreClosedError(StoreError):
    """The store was used after ``close()``."""


class InvalidPointError(StoreError, ValueError):
    """A record, id or query vector is malformed; the message names the field."""


class InvalidFilterError(StoreError, ValueError):
    """A :class:`~actors.retriever.store.Filter` contradicts itself (empty range, naive date)."""


class BackendError(StoreError):
    """The engine refused or failed in a way none of the classes above describes.

    The engine's own exception is chained as ``__cause__``.
    """
