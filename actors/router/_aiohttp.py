"""httpx requests carried by aiohttp: httpx's API, aiohttp's wire.

At 32 concurrent streams the router is CPU-bound, and most of its CPU went into
HTTP/1.1 framing: h11 (pure Python) turns every SSE event into a separate event
through five generator layers. aiohttp parses with llhttp (C) and hands over
whatever has arrived in one read, so a burst of tokens costs one pass, not one
per token. The same pairing is what the OpenAI SDK offers for high concurrency
(``DefaultAioHttpClient``). The provider code keeps speaking httpx: requests,
responses, timeouts and errors are httpx's, mapped here.
"""

from __future__ import annotations

import base64
import contextlib
import ssl
from collections.abc import AsyncIterator, Iterator

import aiohttp
import httpx

__all__ = ("AiohttpTransport",)


@contextlib.contextmanager
def _as_httpx(request: httpx.Request, *, connecting: bool) -> Iterator[None]:
    """aiohttp's exceptions as the httpx ones callers already handle."""
    try:
        yield
    except aiohttp.ClientConnectorCertificateError as exc:
        raise httpx.ConnectError(str(exc.certificate_error), request=request) from exc
    except aiohttp.ClientConnectorError as exc:  # refused, unreachable, DNS, TLS
        raise httpx.ConnectError(str(exc), request=request) from exc
    except aiohttp.ConnectionTimeoutError as exc:
        raise httpx.ConnectTimeout(str(exc) or "connect timed out", request=request) from exc
    except aiohttp.SocketTimeoutError as exc:
        raise httpx.ReadTimeout(str(exc) or "read timed out", request=request) from exc
    except aiohttp.ClientPayloadError as exc:  # the body ended before its length said
        raise httpx.RemoteProtocolError(str(exc), request=request) from exc
    except aiohttp.ServerDisconnectedError as exc:
        raise httpx.RemoteProtocolError(
            "the server closed the connection without a response" if connecting
            else str(exc), request=request) from exc
    except aiohttp.InvalidURL as exc:
        raise httpx.UnsupportedProtocol(str(exc), request=request) from exc
    except (TimeoutError, aiohttp.ClientError) as exc:
        error = httpx.ConnectError if connecting else httpx.ReadError
        raise error(str(exc) or type(exc).__name__, request=request) from exc


class _Body(httpx.AsyncByteStream):
    """A response body as aiohttp receives it: all that has arrived, per read."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx(self._request, connecting=False):
            async for part in self._response.content.iter_any():
                yield part

    async def aclose(self) -> None:
        # a body read to its end gives the connection back for reuse; one closed early
        # closes the socket, so the server sees the client go and stops generating
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport over one aiohttp session (its own pool of connections).

    The session is made on first use, inside the event loop that will run it.
    ``proxy`` (credentials in its URL, if any) carries every request.
    Cookies are not kept: a provider's answer to one user is no place to carry
    state into another's. Bodies are handed over as sent (compressed or not), for
    httpx to decode as it would its own.
    """

    def __init__(self, *, ssl_context: ssl.SSLContext, limits: httpx.Limits,
                 proxy: str | None = None) -> None:
        self._ssl_context = ssl_context
        self._limits = limits
        self._session: aiohttp.ClientSession | None = None
        self._proxy: str | None = None
        self._proxy_headers: dict[str, str] | None = None
        if proxy:  # aiohttp takes the proxy's credentials apart from its URL
            url = httpx.URL(proxy)
            if url.username:
                basic = base64.b64encode(f"{url.username}:{url.password}".encode()).decode()
                self._proxy_headers = {"Proxy-Authorization": f"Basic {basic}"}
            self._proxy = str(url.copy_with(username=None, password=None))

    def _open_session(self) -> aiohttp.ClientSession:
        limits = self._limits
        connector = aiohttp.TCPConnector(
            ssl=self._ssl_context, limit=limits.max_connections or 0,
            keepalive_timeout=(limits.keepalive_expiry
                               if limits.keepalive_expiry is not None else 5.0))
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                     auto_decompress=False, trust_env=False)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._session is None:
            self._session = self._open_session()
        timeouts = request.extensions.get("timeout", {})
        timeout = aiohttp.ClientTimeout(
            total=None, connect=timeouts.get("pool"), sock_connect=timeouts.get("connect"),
            sock_read=timeouts.get("read"))
        headers = request.headers.multi_items()
        if self._proxy_headers and request.url.scheme == "http":
            # a plain-HTTP request goes to the proxy whole, credentials included; aiohttp
            # sends proxy_headers only with the CONNECT that tunnels HTTPS
            headers += self._proxy_headers.items()
        with _as_httpx(request, connecting=True):
            response = await self._session.request(
                request.method, str(request.url), headers=headers,
                data=await request.aread() or None, allow_redirects=False, timeout=timeout,
                skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
                proxy=self._proxy, proxy_headers=self._proxy_headers)
        return httpx.Response(
            response.status, headers=response.raw_headers, stream=_Body(response, request),
            extensions={"http_version": b"HTTP/1.1",
                        "reason_phrase": (response.reason or "").encode()})

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
