"""Conversation memory: the last turns of each session, and a brief of the older ones.

One KV entry per session, in a bucket whose TTL (``trimmer.memory_ttl_s``)
counts from the session's last turn: a session nobody continues disappears by
itself, with no sweeper to run. Replicas of the trimmer share the bucket and
write with compare-and-set, so two turns stored at once are both kept.

The rules here are pure (what to fold, what to recall within a budget); the
brief's text comes from ``_brief``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import msgspec
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from ragbus.runtime import ensure_kv, kv_entries
from ragbus.runtime.text import count_tokens, truncate
from ragbus.subjects import (
    ChatTurn,
    SessionInfo,
    SessionSummary,
    SessionTurn,
    Subjects,
    now_ms,
)

__all__ = (
    "BriefSource",
    "MemoryStore",
    "Recalled",
    "SessionMemory",
    "StoredTurn",
    "memory_bucket",
    "memory_key",
    "open_memory",
    "overflow",
    "recall",
    "session_info",
    "session_summary",
    "transcript",
    "turn_tokens",
)

# request ids remembered to ignore a repeated TurnDone, including turns already folded
_SEEN = 64


class StoredTurn(msgspec.Struct, frozen=True, kw_only=True):
    request_id: str
    question: str
    answer: str
    at: int


BriefSource = Literal["llm", "fallback"]


class SessionMemory(msgspec.Struct, frozen=True, kw_only=True):
    """What is stored per session; ``folded`` counts turns that went into the brief.

    ``brief_source`` says who wrote the brief (an LLM, or the fallback that cuts the
    transcript); None with a brief means it was stored before that was recorded.
    """

    session_id: str
    turns: list[StoredTurn] = msgspec.field(default_factory=list)
    brief: str | None = None
    brief_source: BriefSource | None = None
    folded: int = 0
    seen: list[str] = msgspec.field(default_factory=list)
    updated_at: int = 0
    #: set on a deleted session's tombstone (epoch ms): it holds nothing of the session
    #: and keeps a turn that arrives afterwards from being stored (see MemoryStore.delete)
    deleted_at: int | None = None

    def with_turn(self, turn: StoredTurn) -> SessionMemory:
        return msgspec.structs.replace(self, turns=[*self.turns, turn],
                                       seen=[*self.seen, turn.request_id][-_SEEN:])


@dataclass(frozen=True, slots=True)
class Recalled:
    """Memory fitted into a prompt: ``history`` oldest first, ``tokens`` all it costs."""

    history: list[ChatTurn] = field(default_factory=list)
    brief: str | None = None
    tokens: int = 0
    turns: int = 0
    brief_source: Literal["llm", "fallback", "unknown"] | None = None


def memory_bucket(subjects: Subjects, ttl_s: float) -> KeyValueConfig:
    return KeyValueConfig(bucket=subjects.bucket("memory"), history=1, ttl=ttl_s,
                          storage=StorageType.FILE,
                          description="conversation memory: <sha256(session id)> -> turns, brief")


async def open_memory(nc: NATS, subjects: Subjects, ttl_s: float, *,
                      replicas: int = 1) -> KeyValue:
    """The memory bucket, created if missing, its TTL set to ``ttl_s`` if it was created
    with another (the setting would otherwise only apply to a fresh deployment)."""
    kv = await ensure_kv(nc, memory_bucket(subjects, ttl_s), replicas=replicas)
    stream = f"KV_{subjects.bucket('memory')}"
    js = nc.jetstream()
    info = await js.stream_info(stream)
    config = info.config
    if config.max_age != ttl_s:
        # JetStream refuses a duplicate window longer than the maximum age
        window = min(config.duplicate_window or ttl_s, ttl_s)
        await js.update_stream(replace(config, max_age=ttl_s, duplicate_window=window))
    return kv


def memory_key(session_id: str) -> str:
    """A KV-safe key for any session id (clients choose them; KV keys are restricted)."""
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()


def session_info(memory: SessionMemory, request_id: str, ttl_s: float) -> SessionInfo:
    """The memory as ``session.get`` answers it; it expires ``ttl_s`` after its last write."""
    return SessionInfo(
        request_id=request_id, session_id=memory.session_id,
        turns=[SessionTurn(request_id=t.request_id, question=t.question, answer=t.answer,
                           at=t.at) for t in memory.turns],
        brief=memory.brief, brief_source=memory.brief_source, folded=memory.folded,
        updated_at=memory.updated_at,
        expires_at=memory.updated_at + int(ttl_s * 1000) if memory.updated_at else None)


def session_summary(memory: SessionMemory) -> SessionSummary:
    return SessionSummary(session_id=memory.session_id, turns=len(memory.turns),
                          folded=memory.folded, has_brief=bool(memory.brief),
                          updated_at=memory.updated_at)


def turn_tokens(turn: StoredTurn) -> int:
    return count_tokens(turn.question) + count_tokens(turn.answer)


def overflow(turns: Sequence[StoredTurn], max_turns: int, max_tokens: int) -> int:
    """How many of the oldest turns must fold into the brief so that at most ``max_turns``
    remain and they hold at most ``max_tokens`` (possibly all of them)."""
    sizes = [turn_tokens(t) for t in turns]
    n = max(0, len(turns) - max_turns)
    total = sum(sizes[n:])
    while n < len(turns) and total > max_tokens:
        total -= sizes[n]
        n += 1
    return n


def transcript(brief: str | None, turns: Sequence[StoredTurn]) -> str:
    """The brief followed by the turns as plain dialogue: what the summarizer reads, and
    (cut to its tail) the brief when no summarizer answers."""
    lines = [f"Earlier: {brief}"] if brief else []
    for turn in turns:
        lines.append(f"User: {turn.question}")
        lines.append(f"Assistant: {turn.answer}")
    return "\n".join(lines)


def recall(memory: SessionMemory | None, budget: int, brief_tokens: int) -> Recalled:
    """The brief and the most recent turns that fit ``budget`` tokens.

    The brief is cut to its tail (the most recent part) if it is over its own cap;
    turns are taken newest first and stop at the first that does not fit, so the
    history never has a hole in it.
    """
    if memory is None or budget <= 0:
        return Recalled()
    brief = truncate(memory.brief, min(brief_tokens, budget), keep="tail") \
        if memory.brief else ""
    used = count_tokens(brief) if brief else 0
    recent: list[StoredTurn] = []
    for turn in reversed(memory.turns):
        size = turn_tokens(turn)
        if used + size > budget:
            break
        recent.append(turn)
        used += size
    recent.reverse()
    history: list[ChatTurn] = []
    for t in recent:
        history.append(ChatTurn(role="user", content=t.question))
        history.append(ChatTurn(role="assistant", content=t.answer))
    source = (memory.brief_source or "unknown") if brief else None
    return Recalled(history=history, brief=brief or None, tokens=used, turns=len(recent),
                    brief_source=source)


class MemoryStore:
    """Sessions in the KV bucket, read and written with their revision."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def get(self, session_id: str) -> tuple[SessionMemory | None, int | None]:
        """The session's memory and its revision; ``(None, None)`` if none (or expired).
        A deleted session's is its tombstone (``deleted_at`` set, nothing else)."""
        try:
            entry = await self.kv.get(memory_key(session_id))
        except KeyNotFoundError:
            return None, None
        if not entry.value:
            return None, None
        try:
            memory = msgspec.json.decode(entry.value, type=SessionMemory)
        except msgspec.DecodeError:
            return None, entry.revision  # unreadable: overwrite it rather than fail forever
        return memory, entry.revision

    async def all(self) -> list[SessionMemory]:
        """Every session's memory (unreadable entries skipped), newest first."""
        found: list[SessionMemory] = []
        for entry in await kv_entries(self.kv):
            try:
                memory = msgspec.json.decode(entry.value or b"", type=SessionMemory)
            except msgspec.DecodeError:
                continue
            if memory.deleted_at is None:  # a tombstone is no session
                found.append(memory)
        found.sort(key=lambda m: m.updated_at, reverse=True)
        return found

    async def delete(self, session_id: str) -> None:
        """Replace the session's memory with a tombstone that holds nothing of it.

        A purge would leave no entry, and a turn answered while the session was being
        deleted (its ``TurnDone`` still on the way, or a replica in the middle of storing
        it) would then create the memory again. The tombstone is written unconditionally,
        so a replica's check-and-set on the revision it read fails, it reads again, finds
        the tombstone and drops the turn. The bucket keeps one revision per key
        (``history=1``), so no earlier content stays in the stream; the tombstone expires
        with the bucket's TTL (``trimmer.memory_ttl_s``), after which the id is new again.
        """
        tomb = SessionMemory(session_id="", deleted_at=now_ms())
        await self.kv.put(memory_key(session_id), msgspec.json.encode(tomb))

    async def put(self, memory: SessionMemory, revision: int | None) -> bool:
        """Store ``memory`` if the entry is still at ``revision``; False if it moved on."""
        key = memory_key(memory.session_id)
        data = msgspec.json.encode(memory)
        try:
            if revision is None:
                await self.kv.create(key, data)
            else:
                await self.kv.update(key, data, last=revision)
        except KeyWrongLastSequenceError:
            return False
        return True
