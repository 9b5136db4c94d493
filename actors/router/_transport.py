"""httpx connections straight on asyncio's transports, for the streaming leg.

httpcore reaches the network through anyio, which costs, on every read of every
stream: an ``anyio.fail_after`` cancel scope, a ``map_exceptions`` context
manager, a pause/resume of the socket's reading, and a checkpoint on every
write. A provider's answer is many small reads (one per token), so at 32
concurrent streams that machinery was the largest single share of the router's
CPU. This backend does what the asyncio stack does natively: the protocol keeps
reading into a buffer; a read hands over what is there, and only when nothing
is waits on one future (with a timer only if httpcore asked for a timeout).
httpx stays the client (its API, errors, pool, TLS context); only the layer
under httpcore is swapped, through httpcore's public ``network_backend``
(encode/httpcore#930 and pydantic/httpx2#1170 measure the same overhead).

Cancellation is asyncio's: a cancelled task stops waiting on the future, and
closing the stream closes the socket at once, which is what stops a model.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

__all__ = ("AsyncioBackend", "asyncio_transport")

#: stop reading from the socket above this much unread data; start again below the low mark
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024

SocketOption = (tuple[int, int, int] | tuple[int, int, bytes | bytearray]
                | tuple[int, int, None, int])


def _expire(waiter: asyncio.Future[None], error: type[Exception], message: str) -> None:
    if not waiter.done():
        waiter.set_exception(error(message))


async def _wait(waiter: asyncio.Future[None], timeout: float | None,
                error: type[Exception], message: str) -> None:
    """Until ``waiter`` is done; ``error(message)`` if that takes over ``timeout``."""
    timer = (None if timeout is None
             else waiter.get_loop().call_later(timeout, _expire, waiter, error, message))
    try:
        await waiter
    finally:
        if timer is not None:
            timer.cancel()


class _Protocol(asyncio.Protocol):
    """Buffers what arrives; wakes the one reader or writer waiting on the connection."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.eof = False
        self.error: Exception | None = None
        self.reading_paused = False
        self.writing_paused = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None

    # -- asyncio's side ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > _HIGH_WATER and not self.reading_paused and self.transport:
            self.transport.pause_reading()
            self.reading_paused = True
        self._wake_reader()

    def eof_received(self) -> bool | None:
        self.eof = True
        self._wake_reader()
        return None  # close the transport (required for TLS, harmless for TCP)

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake_reader()
        self.resume_writing()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_reader(self) -> None:
        waiter, self._read_waiter = self._read_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the stream's side ------------------------------------------------------------
    def take(self, max_bytes: int) -> bytes:
        data = self.chunks.popleft()
        if len(data) > max_bytes:
            self.chunks.appendleft(data[max_bytes:])
            data = data[:max_bytes]
        self.buffered -= len(data)
        if self.reading_paused and self.buffered < _LOW_WATER and self.transport:
            self.reading_paused = False
            self.transport.resume_reading()
        return data

    async def readable(self, timeout: float | None) -> None:
        """Until data, end of stream or an error arrive."""
        self._read_waiter = waiter = asyncio.get_running_loop().create_future()
        try:
            await _wait(waiter, timeout, httpcore.ReadTimeout, "no data within the timeout")
        finally:
            if self._read_waiter is waiter:
                self._read_waiter = None

    async def drained(self, timeout: float | None) -> None:
        """Until the transport takes writes again (or the connection is lost)."""
        self._drain_waiter = waiter = asyncio.get_running_loop().create_future()
        try:
            await _wait(waiter, timeout, httpcore.WriteTimeout, "the peer is not reading")
        finally:
            if self._drain_waiter is waiter:
                self._drain_waiter = None


class _Stream(httpcore.AsyncNetworkStream):
    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        p = self._protocol
        if not p.chunks:
            if p.eof:
                if p.error is not None:
                    raise httpcore.ReadError(str(p.error) or type(p.error).__name__)
                return b""
            await p.readable(timeout)
            if not p.chunks:
                return await self.read(max_bytes, timeout)  # woken by EOF or an error
        return p.take(max_bytes)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        if self._transport.is_closing():
            raise httpcore.WriteError("the connection is closed")
        try:
            self._transport.write(buffer)
        except (OSError, RuntimeError) as exc:
            raise httpcore.WriteError(str(exc)) from exc
        if self._protocol.writing_paused:
            await self._protocol.drained(timeout)
            if self._protocol.error is not None:
                raise httpcore.WriteError(str(self._protocol.error))

    async def aclose(self) -> None:
        if self._transport.get_extra_info("ssl_object") is not None:
            # no TLS close_notify exchange (httpcore's anyio backend skips it too): a peer
            # that never answers it would keep the socket, and the model, going for 30 s
            self._transport.abort()
        else:
            self._transport.close()
        await asyncio.sleep(0)  # let the loop close the socket before this returns

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport = await loop.start_tls(self._transport, self._protocol, ssl_context,
                                                 server_hostname=server_hostname)
        except TimeoutError:
            self._transport.close()
            raise httpcore.ConnectTimeout("the TLS handshake did not finish in time") from None
        except (OSError, ssl.SSLError) as exc:
            self._transport.close()
            raise httpcore.ConnectError(str(exc)) from exc
        if transport is None:  # the connection closed during the handshake
            raise httpcore.ConnectError("the connection closed during the TLS handshake")
        self._protocol.transport = transport
        return _Stream(transport, self._protocol)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":  # an idle kept-alive connection the server has closed
            return bool(self._protocol.chunks) or self._protocol.eof
        name = {"ssl_object": "ssl_object", "client_addr": "sockname",
                "server_addr": "peername", "socket": "socket"}.get(info)
        return None if name is None else self._transport.get_extra_info(name)


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend on asyncio transports (asyncio event loops only)."""

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[SocketOption] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        local = (local_address, 0) if local_address else None
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_connection(
                    _Protocol, host, port, local_addr=local)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"no connection to {host}:{port} in time") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        # asyncio already sets TCP_NODELAY on TCP sockets
        return self._stream(transport, protocol, socket_options)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[SocketOption] | None = None,
                                  ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_unix_connection(_Protocol, path)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"no connection to {path} in time") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        return self._stream(transport, protocol, socket_options)

    @staticmethod
    def _stream(transport: asyncio.BaseTransport, protocol: _Protocol,
                socket_options: Iterable[SocketOption] | None) -> _Stream:
        assert isinstance(transport, asyncio.Transport)
        sock: socket.socket | None = transport.get_extra_info("socket")
        if sock is not None:
            for option in socket_options or ():
                sock.setsockopt(*option)
        return _Stream(transport, protocol)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def asyncio_transport(*, ssl_context: ssl.SSLContext,
                      limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """An httpx transport whose connections use :class:`AsyncioBackend`.

    httpx does not take a network backend itself, so its transport's connection
    pool is replaced by the same pool httpx would build, plus the backend.
    """
    transport = httpx.AsyncHTTPTransport(verify=ssl_context, limits=limits)
    transport._pool = httpcore.AsyncConnectionPool(  # see the docstring
        ssl_context=ssl_context, max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry, network_backend=AsyncioBackend())
    return transport
