"""A real loopback HTTP server speaking OpenAI's chat-completions SSE streaming protocol.

Not a mock: clients connect over TCP, send real HTTP/1.1 (keep-alive, chunked
responses) and parse real ``data:`` events. Each request is answered by a
:class:`Behaviour` (the next scripted one, else the default), which can inject
the faults providers show in production: 429 with Retry-After, 500, out-of-memory
text, auth failure, a stall before the first token or mid-stream, a dropped
connection mid-stream, an error event, or a fixed token pace. The server records
every request, how many connections and streams were open at once, and every
client disconnect (with the time, so a test or benchmark can see how fast a
cancelled request closed its connection).

It runs on the current asyncio loop without a task group, so it can live in a
pytest fixture as well as in an ``async with`` block (or in a process of its own,
read through ``GET /_fake/records``)::

    async with FakeOpenAI(Behaviour.counting(5)) as fake:
        url = fake.base_url          # http://127.0.0.1:<port>/v1
        fake.script(Behaviour.rate_limited(retry_after="1"))   # the next request only

:func:`closed_port_url` gives a URL where nothing listens (connection refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any

from .ports import free_port

__all__ = ("Behaviour", "Disconnect", "FakeOpenAI", "RecordedRequest", "closed_port_url")

_STALL_CAP_S = 300.0  # a stall ends when the client leaves, or after this, or at stop()
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How the server answers one chat-completions request."""

    tokens: tuple[str, ...] = ("Hello", ",", " world", ".")
    pace_s: float = 0.0               # pause between tokens
    first_token_delay_s: float = 0.0  # after the headers, before the first token
    headers_delay_s: float = 0.0      # before the status line
    status: int = 200
    retry_after: str | None = None
    error_body: str | None = None     # body of an error status (JSON or text)
    stall_after: int | None = None    # after this many tokens, send nothing more
    disconnect_after: int | None = None  # after this many tokens, drop the connection
    error_event_after: int | None = None  # after this many tokens, an SSE error event
    error_event: str = "the model crashed"
    usage: bool = True
    batch: int = 1                    # events per write when pace_s is 0

    @classmethod
    def counting(cls, n: int, *, pace_s: float = 0.0, **kw: Any) -> Behaviour:
        """``n`` tokens "t0 ", "t1 ", ... (easy to check for gaps and order)."""
        return cls(tokens=tuple(f"t{i} " for i in range(n)), pace_s=pace_s, **kw)

    @classmethod
    def rate_limited(cls, retry_after: str | None = "1") -> Behaviour:
        return cls(status=429, retry_after=retry_after, error_body=json.dumps(
            {"error": {"message": "Rate limit reached for requests", "type": "rate_limit"}}))

    @classmethod
    def server_error(cls, status: int = 500) -> Behaviour:
        return cls(status=status, error_body=json.dumps(
            {"error": {"message": "The server had an error", "type": "server_error"}}))

    @classmethod
    def out_of_memory(cls) -> Behaviour:
        return cls(status=500, error_body="CUDA error: out of memory (tried to allocate 2 GiB)")

    @classmethod
    def auth_failure(cls) -> Behaviour:
        return cls(status=401, error_body=json.dumps(
            {"error": {"message": "Invalid API key", "type": "invalid_request_error"}}))

    @classmethod
    def stall_before_first_token(cls) -> Behaviour:
        return cls(stall_after=0)

    @classmethod
    def stall_mid_stream(cls, after: int = 2, n: int = 10) -> Behaviour:
        return replace(cls.counting(n), stall_after=after)

    @classmethod
    def disconnect_mid_stream(cls, after: int = 2, n: int = 10) -> Behaviour:
        return replace(cls.counting(n), disconnect_after=after)


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    index: int
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float  # time.perf_counter()


@dataclass(frozen=True, slots=True)
class Disconnect:
    """The client closed its connection before the response was complete."""

    request_index: int
    at: float  # time.perf_counter() when the server saw it
    tokens_sent: int


@dataclass(slots=True)
class _Stream:
    index: int
    tokens_sent: int = 0
    complete: bool = False
    dropped: bool = False  # the server closed it on purpose: not a client disconnect
    gone: asyncio.Future[bytes] | None = None


@dataclass(slots=True)
class _Counters:
    connections: int = 0
    open_connections: int = 0
    max_open_connections: int = 0
    streams: int = 0
    max_streams: int = 0
    completed: int = 0
    stalls_released: int = 0
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)


def closed_port_url() -> str:
    """An OpenAI base URL on a loopback port nothing listens on (connection refused)."""
    return f"http://127.0.0.1:{free_port()}/v1"


class FakeOpenAI:
    """The server; see the module docstring."""

    def __init__(self, behaviour: Behaviour | None = None, *, host: str = "127.0.0.1",
                 model: str = "fake-model") -> None:
        self.behaviour = behaviour or Behaviour()
        self.host = host
        self.model = model
        self.port = 0
        self.requests: list[RecordedRequest] = []
        self.disconnects: list[Disconnect] = []
        self.counters = _Counters()
        self._script: deque[Behaviour] = deque()
        self._server: asyncio.Server | None = None
        self._changed = asyncio.Event()
        self._stopping = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> str:
        self._server = await asyncio.start_server(self._connection, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.base_url

    async def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.close()
            for task in list(self.counters.tasks):
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def __aenter__(self) -> FakeOpenAI:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    # -- steering and observing ------------------------------------------------------------
    def script(self, *behaviours: Behaviour) -> None:
        """Answer the next requests with these, in order; then the default again."""
        self._script.extend(behaviours)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` is true (checked on every recorded change)."""
        async def loop() -> None:
            while True:
                changed = self._changed
                if predicate():
                    return
                await changed.wait()
        await asyncio.wait_for(loop(), timeout)

    async def wait_for_disconnects(self, n: int, timeout: float = 5.0) -> None:
        await self.wait_until(lambda: len(self.disconnects) >= n, timeout)

    async def wait_for_requests(self, n: int, timeout: float = 5.0) -> None:
        await self.wait_until(lambda: len(self.chat_requests) >= n, timeout)

    def records(self) -> dict[str, Any]:
        """What was recorded, as JSON (also served at ``GET /_fake/records``, for a server
        running in another process; ``?disconnects=N`` waits for the N+1st disconnect).
        ``at`` is ``time.perf_counter()``: CLOCK_MONOTONIC on Linux, so comparable across
        processes."""
        c = self.counters
        return {
            "chat_requests": len(self.chat_requests),
            "disconnects": [{"request_index": d.request_index, "at": d.at,
                             "tokens_sent": d.tokens_sent} for d in self.disconnects],
            "connections": c.connections, "max_open_connections": c.max_open_connections,
            "max_streams": c.max_streams, "completed": c.completed,
        }

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- HTTP --------------------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        c = self.counters
        c.tasks.add(task)
        c.connections += 1
        c.open_connections += 1
        c.max_open_connections = max(c.max_open_connections, c.open_connections)
        writer.transport.set_write_buffer_limits(high=0)  # write through: pacing is real
        try:
            while not self._stopping.is_set():
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                        ConnectionError):
                    break
                method, path, headers = _parse_head(head)
                length = int(headers.get("content-length", "0") or 0)
                raw = await reader.readexactly(length) if length else b""
                body: Any = None
                if raw:
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        body = raw.decode("utf-8", "replace")
                record = RecordedRequest(len(self.requests), method, path, headers, body,
                                         time.perf_counter())
                self.requests.append(record)
                self._notify()
                keep = await self._respond(record, reader, writer)
                if not keep or headers.get("connection", "").lower() == "close":
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            c.open_connections -= 1
            c.tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            self._notify()

    async def _respond(self, req: RecordedRequest, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection must not be reused."""
        if req.method == "GET" and req.path.endswith("/models"):
            _send_json(writer, 200, {"object": "list", "data": [
                {"id": self.model, "object": "model", "owned_by": "fake"}]})
            await writer.drain()
            return True
        if req.method == "GET" and "/_fake/records" in req.path:
            # ?disconnects=N waits (up to 10 s) until more than N disconnects are recorded
            _, _, query = req.path.partition("?disconnects=")
            if query.isdigit():
                with contextlib.suppress(TimeoutError):
                    await self.wait_until(lambda: len(self.disconnects) > int(query), 10.0)
            _send_json(writer, 200, self.records())
            await writer.drain()
            return True
        if req.method != "POST" or not req.path.endswith("/chat/completions"):
            _send_json(writer, 404, {"error": {"message": f"no route {req.path}"}})
            await writer.drain()
            return True
        behaviour = self._script.popleft() if self._script else self.behaviour
        if behaviour.headers_delay_s:
            await asyncio.sleep(behaviour.headers_delay_s)
        if behaviour.status != 200:
            extra = {"Retry-After": behaviour.retry_after} if behaviour.retry_after else {}
            body = (behaviour.error_body or "").encode()
            kind = "application/json" if body.startswith(b"{") else "text/plain"
            _send(writer, behaviour.status, body, {"Content-Type": kind, **extra})
            await writer.drain()
            return True
        return await self._stream(req, behaviour, reader, writer)

    async def _stream(self, req: RecordedRequest, b: Behaviour, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> bool:
        c = self.counters
        stream = _Stream(req.index)
        c.streams += 1
        c.max_streams = max(c.max_streams, c.streams)
        # the client's EOF (or reset) is the disconnect; the callback stamps it at once
        stream.gone = asyncio.ensure_future(reader.read(1))

        def on_gone(fut: asyncio.Future[bytes]) -> None:
            if fut.cancelled():
                return
            fut.exception()  # a reset is as good as an EOF; retrieve it so nothing warns
            if stream.complete or stream.dropped or self._stopping.is_set():
                return
            self.disconnects.append(Disconnect(req.index, time.perf_counter(),
                                               stream.tokens_sent))
            self._notify()

        stream.gone.add_done_callback(on_gone)
        want_usage = bool(isinstance(req.body, dict)
                          and (req.body.get("stream_options") or {}).get("include_usage"))
        model = req.body.get("model", self.model) if isinstance(req.body, dict) else self.model
        try:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
            ident = f"chatcmpl-{req.index}"
            _chunk(writer, _event(ident, model, {"role": "assistant", "content": ""}))
            await writer.drain()
            if b.first_token_delay_s and not await self._pause(stream, b.first_token_delay_s):
                return False
            pending = 0
            for i, token in enumerate(b.tokens):
                if b.stall_after is not None and i >= b.stall_after:
                    await writer.drain()
                    await self._pause(stream, _STALL_CAP_S)
                    return False
                if b.disconnect_after is not None and i >= b.disconnect_after:
                    await writer.drain()
                    stream.dropped = True
                    writer.transport.abort()
                    return False
                if b.error_event_after is not None and i >= b.error_event_after:
                    break
                if stream.gone.done():
                    return False
                _chunk(writer, _event(ident, model, {"content": token}))
                stream.tokens_sent += 1
                pending += 1
                if b.pace_s:
                    await writer.drain()
                    if not await self._pause(stream, b.pace_s):
                        return False
                elif pending >= b.batch:
                    pending = 0
                    await writer.drain()
            if b.error_event_after is not None:
                _chunk(writer, b"data: " + json.dumps(
                    {"error": {"message": b.error_event, "type": "server_error"}}).encode()
                    + b"\n\n")
            else:
                _chunk(writer, _event(ident, model, {}, finish="stop"))
                if b.usage and want_usage:
                    _chunk(writer, b"data: " + json.dumps({
                        "id": ident, "object": "chat.completion.chunk", "model": model,
                        "choices": [], "usage": {
                            "prompt_tokens": _prompt_tokens(req.body),
                            "completion_tokens": stream.tokens_sent,
                            "total_tokens": _prompt_tokens(req.body) + stream.tokens_sent}},
                    ).encode() + b"\n\n")
                _chunk(writer, b"data: [DONE]\n\n")
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            stream.complete = True
            c.completed += 1
            return True
        except (ConnectionError, OSError):
            return False
        finally:
            c.streams -= 1
            if stream.complete:
                stream.gone.cancel()  # the connection goes on: stop watching it for EOF
                with contextlib.suppress(asyncio.CancelledError):
                    await stream.gone
            else:
                # wait briefly for the client's side of the close, so it is recorded
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(stream.gone), 1.0)
            self._notify()

    async def _pause(self, stream: _Stream, seconds: float) -> bool:
        """Sleep, unless the client leaves first (then False)."""
        assert stream.gone is not None
        stop = asyncio.ensure_future(self._stopping.wait())
        waiting: set[asyncio.Future[Any]] = {stream.gone, stop}
        try:
            await asyncio.wait(waiting, timeout=seconds,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        return not (stream.gone.done() or self._stopping.is_set())


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = [*lines[0].split(" ", 2), "", ""][:3]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    return method, path, headers


def _prompt_tokens(body: Any) -> int:
    if not isinstance(body, dict):
        return 0
    text = " ".join(str(m.get("content", "")) for m in body.get("messages", []))
    return len(text.split())


def _event(ident: str, model: str, delta: dict[str, str], finish: str | None = None) -> bytes:
    payload = {"id": ident, "object": "chat.completion.chunk", "created": int(time.time()),
               "model": model, "choices": [
                   {"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(b"%x\r\n%s\r\n" % (len(data), data))


def _send(writer: asyncio.StreamWriter, status: int, body: bytes,
          headers: dict[str, str]) -> None:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)


def _send_json(writer: asyncio.StreamWriter, status: int, payload: Any) -> None:
    _send(writer, status, json.dumps(payload).encode(), {"Content-Type": "application/json"})
