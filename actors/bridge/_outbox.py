"""What waits to be written to one socket, with tokens coalesced while it waits.

The bus delivers events to one callback for all sockets, which must never wait
for a browser; it puts frames here and a writer task per socket takes them. While
a socket's writes are stuck, later tokens of an ask are appended to that ask's
token frame still in the queue instead of queueing new frames, so a slow reader
gets fewer, larger frames and the backlog is the answer's text, not a pile of
frames. Past ``max_bytes`` the socket is given up on (``on_overflow``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from ._protocol import TokenFrame, encode_frame

__all__ = ("Outbox", "TokenRun", "TokenStream")


@dataclass(slots=True, eq=False)
class TokenStream:
    """One ask's token numbering and the run of tokens still waiting, if any."""

    id: str
    next_seq: int = 0
    waiting: TokenRun | None = None


@dataclass(slots=True, eq=False)
class TokenRun:
    stream: TokenStream
    parts: list[str] = field(default_factory=list)
    size: int = 0


class Outbox:
    def __init__(self, max_bytes: int, on_overflow: Callable[[], None]) -> None:
        self.max_bytes = max_bytes
        self.on_overflow = on_overflow
        self.coalesced = 0  # tokens that joined a frame already queued
        self._items: deque[bytes | TokenRun] = deque()
        self._bytes = 0
        self._wake = anyio.Event()
        self._room = anyio.Event()
        self._overflowed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def size(self) -> int:
        """Bytes queued (token text counted as its characters)."""
        return self._bytes

    def put(self, data: bytes, stream: TokenStream | None = None) -> None:
        """Queue an encoded frame; later tokens of ``stream`` start a new frame after it."""
        if stream is not None:
            stream.waiting = None
        self._items.append(data)
        self._grow(len(data))

    def put_token(self, stream: TokenStream, text: str) -> None:
        run = stream.waiting
        if run is None:
            run = stream.waiting = TokenRun(stream)
            self._items.append(run)
        else:
            self.coalesced += 1
        run.parts.append(text)
        run.size += len(text)
        self._grow(len(text))

    def _grow(self, n: int) -> None:
        self._bytes += n
        self._wake.set()
        if self._bytes > self.max_bytes and not self._overflowed:
            self._overflowed = True
            self.on_overflow()

    def has_room(self) -> bool:
        return self._bytes <= self.max_bytes // 2

    async def wait_for_room(self) -> None:
        """Wait until the backlog is at most half of ``max_bytes``."""
        while not self.has_room():
            await self._room.wait()
            self._room = anyio.Event()

    async def get(self) -> bytes:
        """The next frame to write, encoded; a token run gets its ``seq`` now, so the
        numbers follow the order frames are written in."""
        while not self._items:
            await self._wake.wait()
            self._wake = anyio.Event()
        item = self._items.popleft()
        if isinstance(item, TokenRun):
            stream = item.stream
            if stream.waiting is item:
                stream.waiting = None
            data = encode_frame(TokenFrame(id=stream.id, seq=stream.next_seq,
                                           text="".join(item.parts)))
            stream.next_seq += 1
            self._bytes -= item.size
        else:
            data = item
            self._bytes -= len(item)
        if self.has_room():
            self._room.set()
        return data
