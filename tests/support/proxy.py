"""A forward HTTP proxy on loopback that records what passes through it.

It takes absolute-form requests (``POST http://host:port/path HTTP/1.1``), as a
client configured with ``HTTP_PROXY`` sends them, forwards each in origin form
to its host, and pipes the answer back; and ``CONNECT host:port``, which
tunnels HTTPS.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

__all__ = ("ForwardProxy", "forward_proxy")


class ForwardProxy:
    def __init__(self) -> None:
        self.port = 0
        self.requests: list[str] = []  # request lines as received
        self.authorizations: list[str | None] = []  # Proxy-Authorization, if sent

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def forward_proxy() -> AsyncIterator[ForwardProxy]:
    proxy = ForwardProxy()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        line, *headers = head.decode("latin-1").split("\r\n")
        method, target, version = line.split(" ")
        proxy.requests.append(line)
        kept = [h for h in headers if h and not h.lower().startswith("proxy-")]
        auth = [h.split(":", 1)[1].strip() for h in headers
                if h.lower().startswith("proxy-authorization:")]
        proxy.authorizations.append(auth[0] if auth else None)
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            return
        url = urlsplit(target)
        path = url.path + (f"?{url.query}" if url.query else "")
        up_reader, up_writer = await asyncio.open_connection(url.hostname, url.port or 80)
        up_writer.write(f"{method} {path} {version}\r\n".encode("latin-1")
                        + "".join(f"{h}\r\n" for h in kept).encode("latin-1") + b"\r\n")
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    proxy.port = server.sockets[0].getsockname()[1]
    try:
        yield proxy
    finally:
        server.close()
