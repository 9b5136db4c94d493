"""ServerStore: a collection on a Qdrant server, through the synchronous qdrant-client.

The same class runs on ``QdrantClient(":memory:")`` for tests. That local mode is
brute force in Python, ignores payload indexes and search parameters (and warns
about both), so they are not sent to it. The async client is not used: in local
mode it runs that brute force on the event loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import islice
from types import TracebackType
from typing import Any, Final, Self

from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from ragbus.subjects import SparseVector

from ._errors import (
    BackendError,
    CollectionMissingError,
    DimensionMismatchError,
    IncompatibleCollectionError,
    InvalidPointError,
    StoreClosedError,
    StoreError,
    StoreLockedError,
    StoreUnavailableError,
)
from ._filter import LIVE, Filter
from ._schema import DENSE, INDEXED_FIELDS, SPARSE, IndexKind
from ._server_filter import to_server_filter
from ._tuning import SERVER_SEARCH, SearchTuning
from ._types import Hit, Page, Record, StoredPoint, check_id, check_sparse, plain_payload

__all__ = ("ServerStore",)

_BATCH: Final = 256
_SCHEMA: Final = {
    IndexKind.KEYWORD: models.PayloadSchemaType.KEYWORD,
    IndexKind.BOOL: models.PayloadSchemaType.BOOL,
    IndexKind.INTEGER: models.PayloadSchemaType.INTEGER,
    IndexKind.DATETIME: models.PayloadSchemaType.DATETIME,
}
#: Statuses after which the same request may succeed later.
_TRANSIENT: Final = frozenset({502, 503, 504})


class ServerStore:
    """A :class:`VectorStore` on one collection of a Qdrant server (or of its local mode).

    Writes wait for the server to apply them, so a read right after sees them.
    The client is closed by :meth:`close` only if this store created it
    (:meth:`connect`).
    """

    def __init__(
        self,
        client: QdrantClient,
        collection: str,
        *,
        search: SearchTuning = SERVER_SEARCH,
        owns_client: bool = False,
    ) -> None:
        self._client = client
        self._collection = collection
        options = client.init_options
        self._local = options.get("location") == ":memory:" or options.get("path") is not None
        where = options.get("url") or options.get("location") or options.get("path")
        self._where = f"Qdrant collection {collection!r} at {where or options.get('host')}"
        self._params = None if self._local else _search_params(search)
        self._owns_client = owns_client
        self._dim: int | None = None
        self._closed = False

    @classmethod
    def connect(
        cls,
        location: str,
        collection: str,
        *,
        api_key: str | None = None,
        timeout: int = 10,
        search: SearchTuning = SERVER_SEARCH,
    ) -> Self:
        """Open ``location``: a server URL, ``":memory:"``, or a directory for local mode.

        A local-mode directory admits one client at a time; a second raises
        :class:`StoreLockedError`.
        """
        if location == ":memory:":
            client = QdrantClient(location=":memory:")
        elif "://" in location:
            client = QdrantClient(url=location, api_key=api_key, timeout=timeout)
        else:
            try:
                client = QdrantClient(path=location)
            except RuntimeError as exc:
                raise StoreLockedError(
                    f"{location} is already open by another Qdrant client: close it first, "
                    f"or run a Qdrant server for concurrent access"
                ) from exc
        return cls(client, collection, search=search, owns_client=True)

    @property
    def collection(self) -> str:
        return self._collection

    @property
    def dim(self) -> int | None:
        if self._dim is None and not self._closed:
            with self._call("read the collection"):
                if self._client.collection_exists(self._collection):
                    self._dim = self._check_schema(None)
        return self._dim

    def ensure_collection(self, dim: int) -> None:
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self._check_open()
        with self._call("create the collection"):
            if not self._client.collection_exists(self._collection):
                try:
                    self._client.create_collection(
                        self._collection,
                        vectors_config={
                            DENSE: models.VectorParams(size=dim, distance=models.Distance.COSINE)
                        },
                        sparse_vectors_config={
                            SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)
                        },
                    )
                except UnexpectedResponse as exc:
                    if exc.status_code != 409:  # 409: another process created it first
                        raise
            self._dim = self._check_schema(dim)
            if not self._local:
                self._ensure_indexes()

    def upsert(self, records: Iterable[Record]) -> None:
        self._require()
        it = iter(records)
        while batch := list(islice(it, _BATCH)):
            points = [self._point(record) for record in batch]
            with self._call("upsert points"):
                self._client.upsert(self._collection, points=points, wait=True)

    def delete(self, ids: Sequence[str]) -> None:
        self._require()
        point_ids: list[models.ExtendedPointId] = [check_id(i) for i in ids]
        if point_ids:
            with self._call("delete points"):
                self._client.delete(
                    self._collection, models.PointIdsList(points=point_ids), wait=True
                )

    def set_payload(self, ids: Sequence[str], payload: Mapping[str, Any]) -> None:
        self._require()
        point_ids: list[models.ExtendedPointId] = [check_id(i) for i in ids]
        changes = plain_payload(payload, "set_payload")
        if point_ids:
            with self._call("set payload"):
                self._client.set_payload(self._collection, changes, points=point_ids, wait=True)

    def search(
        self, query: Sequence[float] | SparseVector, *, limit: int = 10, filter: Filter = LIVE,
        payload: bool = True,
    ) -> list[Hit]:
        self._require()
        params = None
        vector: list[float] | models.SparseVector
        if isinstance(query, SparseVector):
            check_sparse(query)
            if not query.indices or limit <= 0:
                return []
            vector, using = models.SparseVector(indices=query.indices, values=query.values), SPARSE
        else:
            vector, using, params = self._dense(list(query), "query"), DENSE, self._params
            if limit <= 0:
                return []
        with self._call("search"):
            found = self._client.query_points(
                self._collection,
                query=vector,
                using=using,
                query_filter=to_server_filter(filter),
                search_params=params,
                limit=limit,
                with_payload=payload,
                with_vectors=False,
            ).points
        return [Hit(id=str(p.id), score=p.score, payload=p.payload or {}) for p in found]

    def retrieve(self, ids: Sequence[str]) -> list[StoredPoint]:
        self._require()
        wanted = [check_id(i) for i in ids]
        if not wanted:
            return []
        point_ids: list[models.ExtendedPointId] = list(wanted)
        with self._call("retrieve points"):
            records = self._client.retrieve(
                self._collection, point_ids, with_payload=True, with_vectors=False
            )
        found = {str(r.id): r.payload or {} for r in records}
        return [StoredPoint(id=i, payload=found[i]) for i in wanted if i in found]

    def scroll(self, *, filter: Filter = LIVE, limit: int = 100, offset: str | None = None) -> Page:
        self._require()
        with self._call("scroll points"):
            records, after = self._client.scroll(
                self._collection,
                scroll_filter=to_server_filter(filter),
                limit=limit,
                offset=None if offset is None else check_id(offset),
                with_payload=True,
                with_vectors=False,
            )
        return Page(
            points=[StoredPoint(id=str(r.id), payload=r.payload or {}) for r in records],
            next_offset=None if after is None else str(after),
        )

    def count(self, filter: Filter = LIVE) -> int:
        self._require()
        with self._call("count points"):
            result = self._client.count(
                self._collection, count_filter=to_server_filter(filter), exact=True
            )
        return result.count

    def optimize(self) -> bool:
        """Nothing to do: the server's optimizer builds HNSW in the background. ``False``."""
        self._require()
        return False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"dim={self._dim}"
        return f"ServerStore({self._where}, {state})"

    # -- internals -------------------------------------------------------------------------

    def _check_schema(self, wanted: int | None) -> int:
        """Dense size, after checking the collection is shaped as ``ensure_collection`` makes it."""
        params = self._client.get_collection(self._collection).config.params
        dense = params.vectors.get(DENSE) if isinstance(params.vectors, dict) else None
        if dense is None:
            raise IncompatibleCollectionError(
                f"{self._where} has no dense vector named {DENSE!r}: it was not created by "
                f"ServerStore; use another collection name"
            )
        if wanted is not None and dense.size != wanted:
            raise DimensionMismatchError(self._where, dense.size, wanted)
        if dense.distance != models.Distance.COSINE:
            raise IncompatibleCollectionError(
                f"{self._where} uses {dense.distance} distance, not Cosine: "
                f"use another collection name"
            )
        sparse = (params.sparse_vectors or {}).get(SPARSE)
        if sparse is None or sparse.modifier != models.Modifier.IDF:
            raise IncompatibleCollectionError(
                f"{self._where} lacks the sparse vector {SPARSE!r} with the IDF modifier: "
                f"use another collection name"
            )
        return dense.size

    def _ensure_indexes(self) -> None:
        present = self._client.get_collection(self._collection).payload_schema
        for field, kind in INDEXED_FIELDS:
            info = present.get(field.value)
            if info is None:
                self._client.create_payload_index(
                    self._collection, field.value, field_schema=_SCHEMA[kind], wait=True
                )
            elif info.data_type != _SCHEMA[kind]:
                raise IncompatibleCollectionError(
                    f"{self._where} indexes {field.value!r} as {info.data_type}, not "
                    f"{kind.value}: use another collection name"
                )

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"{self._where}: store is closed, open a new ServerStore")

    def _require(self) -> None:
        """Fail early with :class:`CollectionMissingError` (local mode would raise a bare
        ValueError)."""
        self._check_open()
        if self.dim is None:
            raise CollectionMissingError(
                f"{self._where} does not exist yet: call ensure_collection(dim) first"
            )

    def _dense(self, vector: list[float], what: str) -> list[float]:
        if len(vector) != self._dim:
            raise InvalidPointError(
                f"{what} has {len(vector)} dimensions but {self._where} holds {self._dim}"
            )
        return vector

    def _point(self, record: Record) -> models.PointStruct:
        vectors: dict[str, models.Vector] = {
            DENSE: self._dense(record.dense, f"record {record.id}")
        }
        if record.sparse is not None:
            vectors[SPARSE] = models.SparseVector(
                indices=record.sparse.indices, values=record.sparse.values
            )
        payload = plain_payload(record.payload, f"record {record.id}")
        return models.PointStruct(id=record.id, vector=vectors, payload=payload)

    @contextmanager
    def _call(self, action: str) -> Iterator[None]:
        """Sort the client's exceptions into the store's; ours pass through untouched."""
        try:
            yield
        except StoreError:
            raise
        except ResponseHandlingException as exc:
            raise StoreUnavailableError(
                f"could not {action}: {self._where} is unreachable ({exc}); check the URL "
                f"and that the server runs, then retry"
            ) from exc
        except UnexpectedResponse as exc:
            if exc.status_code == 404:
                self._dim = None
                raise CollectionMissingError(
                    f"could not {action}: {self._where} does not exist; "
                    f"call ensure_collection(dim) first"
                ) from exc
            if exc.status_code in _TRANSIENT:
                raise StoreUnavailableError(
                    f"could not {action}: {self._where} answered {exc.status_code}; retry later"
                ) from exc
            raise BackendError(f"could not {action} in {self._where}: {exc}") from exc
        except Exception as exc:
            raise BackendError(f"could not {action} in {self._where}: {exc}") from exc


def _search_params(search: SearchTuning) -> models.SearchParams | None:
    if search.hnsw_ef is None and not search.acorn and not search.exact:
        return None
    return models.SearchParams(
        hnsw_ef=search.hnsw_ef,
        exact=search.exact,
        acorn=models.AcornSearchParams(enable=True) if search.acorn else None,
    )
