"""httpx over aiohttp: what the provider code expects of an httpx transport, on real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import httpx
import pytest

from ragbus.actors.router._aiohttp import AiohttpTransport
from tests.support.fake_openai import closed_port_url
from tests.support.proxy import forward_proxy
from tests.support.tls import self_signed, tls_contexts

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
LIMITS = httpx.Limits(max_connections=1, max_keepalive_connections=1)


class Server:
    def __init__(self) -> None:
        self.port = 0
        self.connections = 0
        self.closed = asyncio.Event()  # set when a client's end of a connection closes


@contextlib.asynccontextmanager
async def serve(handler: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    server = Server()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.connections += 1
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    listener = await asyncio.start_server(on_connection, "127.0.0.1", 0, ssl=tls)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def client(ssl_context: ssl.SSLContext | None = None, **kw: object) -> httpx.AsyncClient:
    transport = AiohttpTransport(ssl_context=ssl_context or httpx.create_ssl_context(),
                                 limits=LIMITS)
    return httpx.AsyncClient(transport=transport, **kw)  # type: ignore[arg-type]


def ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


async def test_responses_are_read_whole_over_one_kept_alive_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(ok(b"hello"))
            await writer.drain()

    async with serve(handler) as server, client() as http:
        first = await http.get(f"http://127.0.0.1:{server.port}/")
        second = await http.get(f"http://127.0.0.1:{server.port}/")
    assert (first.content, second.content) == (b"hello", b"hello")
    assert server.connections == 1


async def test_an_idle_connection_the_server_closed_is_replaced_not_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ok(b"once"))
        await writer.drain()  # then close, without saying so in a header

    async with serve(handler) as server, client() as http:
        assert (await http.get(f"http://127.0.0.1:{server.port}/")).content == b"once"
        await anyio.sleep(0.1)  # the server's FIN arrives while the connection is idle
        assert (await http.get(f"http://127.0.0.1:{server.port}/")).content == b"once"
    assert server.connections == 2


async def test_a_body_far_larger_than_the_read_buffer_arrives_intact() -> None:
    body = os.urandom(3 * 1024 * 1024)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ok(body))
        await writer.drain()

    received = bytearray()
    with anyio.fail_after(20):
        async with serve(handler) as server, client() as http, \
                http.stream("GET", f"http://127.0.0.1:{server.port}/") as response:
            async for part in response.aiter_raw():
                received += part
                await anyio.sleep(0.001)  # a slow reader: reading pauses and resumes
    assert bytes(received) == body


async def test_streamed_parts_are_handed_over_as_they_arrive() -> None:
    client_saw_first = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await client_saw_first.wait()  # a backend that waited for more would hang here
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
        await writer.drain()

    parts: list[bytes] = []
    with anyio.fail_after(10):
        async with serve(handler) as server, client() as http, \
                http.stream("GET", f"http://127.0.0.1:{server.port}/") as response:
            async for part in response.aiter_raw():
                parts.append(part)
                client_saw_first.set()
    assert parts == [b"first", b"second"]


async def test_a_stalled_read_is_an_httpx_read_timeout() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(30)

    async with serve(handler) as server, client(timeout=httpx.Timeout(5, read=0.2)) as http:
        with anyio.fail_after(10), pytest.raises(httpx.ReadTimeout):
            await http.get(f"http://127.0.0.1:{server.port}/")


async def test_a_refused_connection_is_an_httpx_connect_error() -> None:
    async with client() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(closed_port_url())


async def test_a_connection_dropped_mid_body_is_a_protocol_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
        await writer.drain()

    async with serve(handler) as server, client() as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get(f"http://127.0.0.1:{server.port}/")


async def test_cancelling_a_waiting_read_and_closing_closes_the_socket_at_once() -> None:
    seen_close = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await writer.drain()
        await reader.read()  # returns at the client's FIN
        seen_close.set()

    async with serve(handler) as server, client() as http:
        async with http.stream("GET", f"http://127.0.0.1:{server.port}/") as response:
            with anyio.move_on_after(0.1) as scope:
                await response.aread()
            assert scope.cancelled_caught
        with anyio.fail_after(2):
            await seen_close.wait()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"))


async def _tls_hello(certificate: tuple[Path, Path], trusted: bool) -> bytes:
    server_tls, client_tls = tls_contexts(certificate, trusted=trusted)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ok(b"secret hello"))
        await writer.drain()

    async with serve(handler, tls=server_tls) as server, client(client_tls) as http:
        return (await http.get(f"https://127.0.0.1:{server.port}/")).content


async def test_tls_to_a_trusted_certificate(certificate: tuple[Path, Path]) -> None:
    assert await _tls_hello(certificate, trusted=True) == b"secret hello"


async def test_tls_to_an_unknown_certificate_is_refused(certificate: tuple[Path, Path]) -> None:
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        await _tls_hello(certificate, trusted=False)


async def test_closing_a_tls_stream_mid_response_closes_the_socket_at_once(
    certificate: tuple[Path, Path],
) -> None:
    server_tls, client_tls = tls_contexts(certificate)
    seen_close = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await reader.read()  # returns when the client's side is gone
        seen_close.set()

    async with serve(handler, tls=server_tls) as server, client(client_tls) as http:
        async with http.stream("GET", f"https://127.0.0.1:{server.port}/") as response:
            async for _ in response.aiter_raw():
                break
        with anyio.fail_after(2):
            await seen_close.wait()


async def test_https_through_a_proxy_is_tunnelled_with_the_proxys_credentials(
    certificate: tuple[Path, Path],
) -> None:
    server_tls, client_tls = tls_contexts(certificate)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ok(b"tunnelled"))
        await writer.drain()

    async with serve(handler, tls=server_tls) as server, forward_proxy() as proxy:
        transport = AiohttpTransport(ssl_context=client_tls, limits=LIMITS,
                                     proxy=proxy.url.replace("http://", "http://me:s3cret@"))
        async with httpx.AsyncClient(transport=transport) as http:
            response = await http.get(f"https://127.0.0.1:{server.port}/")
    assert response.content == b"tunnelled"
    assert proxy.requests == [f"CONNECT 127.0.0.1:{server.port} HTTP/1.1"]
    assert proxy.authorizations == ["Basic bWU6czNjcmV0"]
