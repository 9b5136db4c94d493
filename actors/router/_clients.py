"""httpx clients handed out one per concurrent stream.

httpx's connection pool walks every connection it holds on every request and
every response close (``is_idle``, ``has_expired`` with a socket poll each):
with 32 streams at once that is ~4 ms of CPU per request, most of the router's
cost at that load. A client that only ever holds one connection keeps those
walks O(1); reusing the most recently returned one keeps its connection warm.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

import httpx

from config._router import HttpStack

from ._transport import asyncio_transport

__all__ = ("ClientPool", "single_connection_client")

_ONE_CONNECTION = httpx.Limits(max_connections=1, max_keepalive_connections=1)


def single_connection_client(*, stack: HttpStack, ssl_context: ssl.SSLContext,
                             **options: Any) -> httpx.AsyncClient:
    """A client for :class:`ClientPool`: one connection, on the HTTP stack asked for.

    ``ssl_context`` is shared by the caller's whole pool (a client left to make its
    own loads the CA bundle, 20-30 ms of CPU each time the pool grows).
    """
    transport = (asyncio_transport(ssl_context=ssl_context, limits=_ONE_CONNECTION)
                 if stack == "asyncio" else None)
    return httpx.AsyncClient(verify=ssl_context, limits=_ONE_CONNECTION, transport=transport,
                             **options)


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
