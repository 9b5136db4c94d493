"""What the ingestor remembers of each document: its chunks' hashes and versions.

The manifest is what makes re-ingest cheap: a chunk whose hash is already listed
is neither embedded nor written again. It lives in a KV bucket, so a restarted
or second ingestor sees the same state.
"""

from __future__ import annotations

import hashlib

import msgspec
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from ragbus.runtime import kv_entries
from ragbus.subjects import DocInfo

__all__ = ("ChunkRef", "Manifest", "Manifests", "VersionEntry")


class ChunkRef(msgspec.Struct, frozen=True, array_like=True):
    id: str
    sha256: str


class VersionEntry(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    content_sha256: str
    chunks: int
    at: int


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    doc_id: str
    collection: str
    version: int
    content_sha256: str
    chunks: list[ChunkRef]
    title: str | None = None
    source: str | None = None
    tags: list[str] = msgspec.field(default_factory=list)
    deleted: bool = False
    updated_at: int = 0
    history: list[VersionEntry] = msgspec.field(default_factory=list)
    #: what the chunks were made and embedded with (``JobRunner.index_spec``); a
    #: document indexed under another spec is embedded again, even if unchanged
    index_spec: str | None = None

    def info(self) -> DocInfo:
        return DocInfo(
            doc_id=self.doc_id,
            collection=self.collection,
            version=self.version,
            title=self.title,
            source=self.source,
            tags=self.tags,
            chunks=len(self.chunks),
            deleted=self.deleted,
            updated_at=self.updated_at,
        )


def _key(collection: str, doc_id: str) -> str:
    # doc ids are arbitrary text; KV keys are not, so the key is a hash
    return f"{collection}.{hashlib.sha256(doc_id.encode()).hexdigest()[:40]}"


class Manifests:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self._decoder = msgspec.json.Decoder(Manifest)

    async def get(self, collection: str, doc_id: str) -> Manifest | None:
        try:
            entry = await self._kv.get(_key(collection, doc_id))
        except KeyNotFoundError:
            return None
        return self._decoder.decode(entry.value) if entry.value else None

    async def put(self, manifest: Manifest) -> None:
        await self._kv.put(
            _key(manifest.collection, manifest.doc_id), msgspec.json.encode(manifest)
        )

    async def purge(self, collection: str, doc_id: str) -> None:
        await self._kv.purge(_key(collection, doc_id))

    async def all(self, collection: str) -> list[Manifest]:
        entries = await kv_entries(self._kv, f"{collection}.>")
        return sorted(
            (self._decoder.decode(e.value) for e in entries if e.value), key=lambda m: m.doc_id
        )
