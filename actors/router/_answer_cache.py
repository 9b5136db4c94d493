"""The answer cache: a repeated question is answered from what was said before.

Exact: (scope, normalised question, provider, model, prompt version). Semantic: the
same scope, provider, model and prompt version, and a question whose vector is at
least ``threshold`` cosine-similar. The scope (filters + corpus versions of the
shards searched) comes from the retriever, so a re-ingest never serves a stale
answer. Both live in one KV bucket shared by replicas.
"""

from __future__ import annotations

import hashlib

import msgspec
import numpy as np
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from ragbus.runtime import best_effort

__all__ = ("AnswerCache", "CachedAnswer")


class CachedAnswer(msgspec.Struct, frozen=True, kw_only=True):
    question: str
    text: str
    provider: str
    model: str | None = None
    vector: bytes | None = None


def _norm(question: str) -> str:
    return " ".join(question.lower().split())


def _h(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:48]


class AnswerCache:
    def __init__(self, kv: KeyValue, *, threshold: float, semantic_entries: int) -> None:
        self._kv = kv
        self._threshold = threshold
        self._entries = semantic_entries
        self._one = msgspec.json.Decoder(CachedAnswer)
        self._many = msgspec.json.Decoder(list[CachedAnswer])

    async def _get(self, key: str) -> bytes | None:
        """The entry, or None when there is none or the bucket does not answer in time."""
        async def read() -> bytes | None:
            try:
                return (await self._kv.get(key)).value or None
            except KeyNotFoundError:
                return None

        return await best_effort(read)

    async def lookup(self, *, scope: str, question: str, provider: str, model: str | None,
                     prompt: str, vector: bytes | None) -> tuple[CachedAnswer, str] | None:
        """A cached answer and how it matched ("exact" or "semantic"), or None."""
        exact = await self._get("x." + _h(scope, _norm(question), provider, model or "", prompt))
        if exact is not None:
            return self._one.decode(exact), "exact"
        if vector is None:
            return None
        bucket = await self._get("s." + _h(scope, provider, model or "", prompt))
        if bucket is None:
            return None
        q = np.frombuffer(vector, dtype="<f4")  # the router checked it (wire_vector)
        best, best_sim = None, self._threshold
        for entry in self._many.decode(bucket):
            if entry.vector is None or len(entry.vector) != len(vector):
                continue  # another embedding model's vector: not comparable
            sim = float(np.frombuffer(entry.vector, dtype="<f4") @ q)  # unit vectors
            if sim >= best_sim:
                best, best_sim = entry, sim
        return (best, "semantic") if best is not None else None

    async def store(self, *, scope: str, answer: CachedAnswer, prompt: str) -> None:
        """Keep an answer; a bucket that does not answer in time just misses it."""
        await best_effort(lambda: self._store(scope=scope, answer=answer, prompt=prompt))

    async def _store(self, *, scope: str, answer: CachedAnswer, prompt: str) -> None:
        await self._kv.put("x." + _h(scope, _norm(answer.question), answer.provider,
                                     answer.model or "", prompt), msgspec.json.encode(answer))
        if answer.vector is None:
            return
        key = "s." + _h(scope, answer.provider, answer.model or "", prompt)
        raw = await self._get(key)
        entries = self._many.decode(raw) if raw else []
        entries = [e for e in entries if _norm(e.question) != _norm(answer.question)]
        entries.append(answer)
        # last writer wins between replicas: a lost entry only costs one more generation
        await self._kv.put(key, msgspec.json.encode(entries[-self._entries:]))
