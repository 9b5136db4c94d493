"""The httpx transports a provider sends its requests through, per HTTP stack.

A provider sends one kind of request to one endpoint, so it builds the
``httpx.Request`` itself and hands it straight to a transport: an
``httpx.AsyncClient`` would merge headers, cookies, auth and redirects on every
request (~0.2 ms of CPU) for nothing, and keep the provider's cookies from one
user's request for the next user's.

``aiohttp`` (the default): one transport for every stream, over aiohttp's pool,
whose per-request cost does not grow with the connections it holds.

``httpx``: httpx's own stack, kept as the fallback should a network setup need
it. Its pool walks every connection it holds on every request and every
response close (``is_idle``, ``has_expired`` with a socket poll each): with 32
streams at once that is ~4 ms of CPU per request. So that stack gets a free
list of transports holding one connection each, which keeps those walks O(1);
reusing the most recently returned one keeps its connection warm.

Both go through the proxy the standard environment variables name for the
provider's URL, as curl, requests and a stock httpx client would.
"""

from __future__ import annotations

import ssl
import urllib.request
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import httpx

from ragbus.config import HttpStack

from ._aiohttp import AiohttpTransport

__all__ = ("Pool", "SharedTransport", "Transports", "env_proxy", "provider_transports")

_ONE_CONNECTION = httpx.Limits(max_connections=1, max_keepalive_connections=1)
# no cap of its own: the actor's concurrency bounds the streams
_UNCAPPED = httpx.Limits(max_connections=None, max_keepalive_connections=None)


class Transports(Protocol):
    """Hands out a transport per request; each acquired one is released once."""

    def acquire(self) -> httpx.AsyncBaseTransport: ...

    def release(self, transport: httpx.AsyncBaseTransport) -> None: ...

    async def aclose(self) -> None: ...


def env_proxy(url: str) -> str | None:
    """The proxy for ``url`` from ``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY`` and
    ``NO_PROXY`` (either case); None: connect directly."""
    proxies = urllib.request.getproxies_environment()
    target = httpx.URL(url)
    if "no" in proxies and urllib.request.proxy_bypass(target.host):
        return None
    return proxies.get(target.scheme) or proxies.get("all")


def provider_transports(stack: HttpStack, *, ssl_context: ssl.SSLContext,
                        proxy: str | None = None) -> Transports:
    """The transports for one provider, through ``proxy`` if one is given.

    ``ssl_context`` is shared by all of them: a transport left to make its own
    loads the CA bundle, 20-30 ms of CPU each time the httpx stack's pool grows.
    """
    if stack == "aiohttp":
        return SharedTransport(AiohttpTransport(ssl_context=ssl_context, limits=_UNCAPPED,
                                                proxy=proxy))
    return Pool(lambda: httpx.AsyncHTTPTransport(verify=ssl_context, limits=_ONE_CONNECTION,
                                                 proxy=proxy))


class SharedTransport:
    """One transport for all requests."""

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self.transport = transport

    def acquire(self) -> httpx.AsyncBaseTransport:
        return self.transport

    def release(self, transport: httpx.AsyncBaseTransport) -> None:
        pass

    async def aclose(self) -> None:
        await self.transport.aclose()


class _Closeable(Protocol):
    async def aclose(self) -> None: ...


T = TypeVar("T", bound=_Closeable)


class Pool(Generic[T]):
    """A free list; grows to the peak concurrency, most recently returned first."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._idle: list[T] = []
        self._all: list[T] = []

    def acquire(self) -> T:
        if self._idle:
            return self._idle.pop()
        item = self._make()
        self._all.append(item)
        return item

    def release(self, item: T) -> None:
        self._idle.append(item)

    @property
    def size(self) -> int:
        return len(self._all)

    async def aclose(self) -> None:
        for item in self._all:
            await item.aclose()
        self._all.clear()
        self._idle.clear()
