"""Embeddings shared by every embedder replica, keyed by (model, sha256 of text).

A JetStream KV bucket: replicas and restarts see the same cache without another
service. A small in-process LRU in front saves the round trip for hot texts.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections import OrderedDict
from collections.abc import Sequence

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from ragbus.runtime import best_effort

__all__ = ("EmbeddingCache", "text_key")

_UNSAFE = re.compile(r"[^-_a-zA-Z0-9]")


def text_key(model_id: str, text: str) -> str:
    """The shared cache's key for ``text``'s vector under ``model_id`` (KV-safe)."""
    return f"{_UNSAFE.sub('_', model_id)}.{hashlib.sha256(text.encode()).hexdigest()}"


class EmbeddingCache:
    def __init__(self, kv: KeyValue | None, model_id: str, *, local_entries: int = 4096) -> None:
        self._kv = kv
        self._model_id = model_id
        self._local: OrderedDict[str, bytes] = OrderedDict()
        self._local_entries = local_entries

    def keys(self, texts: Sequence[str]) -> list[str]:
        return [text_key(self._model_id, t) for t in texts]

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        found: list[bytes | None] = [self._local_get(k) for k in keys]
        if self._kv is not None:
            missing = [i for i, v in enumerate(found) if v is None]
            if missing:
                fetched = await asyncio.gather(*(self._kv_get(keys[i]) for i in missing))
                for i, value in zip(missing, fetched, strict=True):
                    if value is not None:
                        found[i] = value
                        self._local_put(keys[i], value)
        return found

    async def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        for key, value in items:
            self._local_put(key, value)
        if self._kv is not None and items:
            kv = self._kv

            async def put_all() -> None:
                await asyncio.gather(*(kv.put(k, v) for k, v in items))

            await best_effort(put_all)

    def _local_get(self, key: str) -> bytes | None:
        value = self._local.get(key)
        if value is not None:
            self._local.move_to_end(key)
        return value

    def _local_put(self, key: str, value: bytes) -> None:
        self._local[key] = value
        self._local.move_to_end(key)
        while len(self._local) > self._local_entries:
            self._local.popitem(last=False)

    async def _kv_get(self, key: str) -> bytes | None:
        """The shared copy, or None when it has none or does not answer in time."""
        kv = self._kv
        assert kv is not None

        async def read() -> bytes | None:
            try:
                return (await kv.get(key)).value
            except KeyNotFoundError:
                return None

        return await best_effort(read)
