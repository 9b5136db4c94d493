"""The retrieval cache, shared by replicas through a JetStream KV bucket."""

from __future__ import annotations

import hashlib

import msgspec
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from ragbus.runtime import best_effort
from ragbus.subjects import QueryFilters, Source

__all__ = ("CachedSources", "RetrievalCache", "answer_scope", "retrieval_key")


class CachedSources(msgspec.Struct, frozen=True, kw_only=True):
    """A retrieval, and the corpus version of each shard it was computed at: it is served
    only while those are still the shards' versions."""

    sources: list[Source]
    missing_shards: list[str]
    vector: bytes | None = None
    versions: dict[str, int] = msgspec.field(default_factory=dict)


def answer_scope(*, filters: QueryFilters | None, shards: dict[str, int]) -> str:
    """What an answer depends on besides its question: the filters and the corpus versions
    of the shards searched. Answers are cached within one scope only."""
    return hashlib.sha256(msgspec.json.encode({"f": filters, "s": sorted(shards.items())})
                          ).hexdigest()[:32]


def retrieval_key(*, question: str, filters: QueryFilters | None, top_k: int, mode: str,
                  widen: bool, shards: list[str], ranking: str = "") -> str:
    """The same search of the same shards, ranked the same way. The shards' versions are
    checked on the entry, so the lookup can run while the versions are read; ``ranking``
    names how hits are fused and collapsed, so a retriever restarted with other settings
    does not serve rankings made under the old ones."""
    canonical = msgspec.json.encode({
        "q": " ".join(question.lower().split()), "f": filters, "k": top_k, "m": mode,
        "w": widen, "s": sorted(shards), "r": ranking,
    })
    return hashlib.sha256(canonical).hexdigest()


class RetrievalCache:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self._decoder = msgspec.json.Decoder(CachedSources)

    async def get(self, key: str) -> CachedSources | None:
        """The cached retrieval, or None (also when the bucket does not answer in time)."""
        async def read() -> bytes | None:
            try:
                return (await self._kv.get(key)).value
            except KeyNotFoundError:
                return None

        raw = await best_effort(read)
        return self._decoder.decode(raw) if raw else None

    async def put(self, key: str, value: CachedSources) -> None:
        # only complete answers are cached: a shard that missed its deadline may answer next time
        if not value.missing_shards:
            await best_effort(lambda: self._kv.put(key, msgspec.json.encode(value)))
