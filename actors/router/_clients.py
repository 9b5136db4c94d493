"""The httpx clients a provider streams through, on the HTTP stack it is set to.

``aiohttp`` (the default): one client for every stream, over aiohttp's pool,
whose per-request cost does not grow with the connections it holds.

``httpx``: httpx's own stack, kept as the fallback should a network setup need
it. Its pool walks every connection it holds on every request and every
response close (``is_idle``, ``has_expired`` with a socket poll each): with 32
streams at once that is ~4 ms of CPU per request. So that stack gets a free
list of clients holding one connection each, which keeps those walks O(1);
reusing the most recently returned one keeps its connection warm.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any, Protocol

import httpx

from config._router import HttpStack

from ._aiohttp import AiohttpTransport

__all__ = ("ClientPool", "Clients", "SharedClient", "provider_clients")

_ONE_CONNECTION = httpx.Limits(max_connections=1, max_keepalive_connections=1)
# no cap of its own: the actor's concurrency bounds the streams
_UNCAPPED = httpx.Limits(max_connections=None, max_keepalive_connections=None)


class Clients(Protocol):
    """Hands out a client per stream; each acquired client is released once."""

    def acquire(self) -> httpx.AsyncClient: ...

    def release(self, client: httpx.AsyncClient) -> None: ...

    async def aclose(self) -> None: ...


def provider_clients(stack: HttpStack, *, ssl_context: ssl.SSLContext,
                     **options: Any) -> Clients:
    """The clients for one provider; ``options`` go to every ``httpx.AsyncClient``.

    ``ssl_context`` is shared by all of them: a client left to make its own loads
    the CA bundle, 20-30 ms of CPU each time the httpx stack's pool grows.
    """
    if stack == "aiohttp":
        transport = AiohttpTransport(ssl_context=ssl_context, limits=_UNCAPPED)
        return SharedClient(httpx.AsyncClient(transport=transport, **options))
    return ClientPool(lambda: httpx.AsyncClient(verify=ssl_context, limits=_ONE_CONNECTION,
                                                **options))


class SharedClient:
    """One client for all streams."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    def acquire(self) -> httpx.AsyncClient:
        return self.client

    def release(self, client: httpx.AsyncClient) -> None:
        pass

    async def aclose(self) -> None:
        await self.client.aclose()


class ClientPool:
    """A free list of single-connection clients; grows to the peak concurrency."""

    def __init__(self, make: Callable[[], httpx.AsyncClient]) -> None:
        self._make = make
        self._idle: list[httpx.AsyncClient] = []
        self._all: list[httpx.AsyncClient] = []

    def acquire(self) -> httpx.AsyncClient:
        if self._idle:
            return self._idle.pop()
        client = self._make()
        self._all.append(client)
        return client

    def release(self, client: httpx.AsyncClient) -> None:
        self._idle.append(client)

    @property
    def size(self) -> int:
        return len(self._all)

    async def aclose(self) -> None:
        for client in self._all:
            await client.aclose()
        self._all.clear()
        self._idle.clear()
