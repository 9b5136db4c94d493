"""Any OpenAI-compatible chat-completions endpoint, streamed over SSE with httpx.

Ollama's /v1, vLLM, the llama.cpp server, Groq, OpenRouter and OpenAI all speak
this. Timeouts are ours, not httpx's, because they differ by phase: the first
token may take a while (prompt processing), a pause between tokens may not.
Every way out of :meth:`OpenAIProvider.stream` closes the response, so a cancelled
request closes its connection and the server stops generating.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import anyio
import httpx
import msgspec

from ragbus.config import ProviderSettings

from ._errors import (
    ProviderAuthError,
    ProviderConnectError,
    ProviderError,
    ProviderOutOfMemoryError,
    ProviderProtocolError,
    ProviderRateLimitedError,
    ProviderRejectedError,
    ProviderServerError,
    ProviderTimeoutError,
)
from ._provider import Prompt, Usage
from ._transports import env_proxy, provider_transports

__all__ = ("OpenAIProvider", "classify_error", "parse_retry_after")

_OOM = re.compile(r"out of memory|\bOOM\b|CUDA error|failed to allocate|cudaMalloc|"
                  r"requires more system memory|insufficient memory", re.IGNORECASE)
_MAX_ERROR_BODY = 64 * 1024


class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta = msgspec.field(default_factory=_Delta)
    finish_reason: str | None = None


class _UsageBody(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = msgspec.field(default_factory=list)
    usage: _UsageBody | None = None
    error: Any = None


_decode_chunk = msgspec.json.Decoder(_Chunk).decode
_encode = msgspec.json.Encoder().encode


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_text(body: bytes | str | Any) -> str:
    """The human part of an error body: ``{"error": {"message": ...}}``, a string, or text."""
    if isinstance(body, bytes):
        text = body.decode("utf-8", "replace")
        try:
            body = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return text.strip()[:300]
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            error = error.get("message") or error.get("type") or error
        return str(error)[:300]
    return str(body).strip()[:300]


def classify_error(provider: str, status: int, body: bytes | str | Any,
                   retry_after: str | None = None) -> ProviderError:
    """The :class:`ProviderError` an HTTP error status (0: an error event) stands for."""
    text = _error_text(body)
    where = f"HTTP {status}" if status else "error event"
    message = f"{where}: {text}" if text else where
    if status == 429:
        return ProviderRateLimitedError(provider, message, parse_retry_after(retry_after))
    if _OOM.search(text):
        return ProviderOutOfMemoryError(provider, message)
    if status in (401, 403):
        return ProviderAuthError(provider, f"{message} (check the provider's api_key)")
    if status == 404:
        return ProviderProtocolError(provider, f"{message} (check base_url and model)")
    if 400 <= status < 500:
        return ProviderRejectedError(provider, message)
    return ProviderServerError(provider, message)


class OpenAIProvider:
    """Streams chat completions from one endpoint and model, over kept-alive connections."""

    is_llm = True

    def __init__(self, settings: ProviderSettings, *, base_url: str | None = None,
                 model: str | None = None) -> None:
        self.name = settings.name
        self.settings = settings
        self.base_url = (base_url or settings.base_url).rstrip("/")
        self._model = model or settings.model
        self._url = httpx.URL(f"{self.base_url}/chat/completions")
        headers = {"Accept": "text/event-stream", "User-Agent": "ragbus"}
        if settings.api_key:
            headers["Authorization"] = f"Bearer {settings.api_key.get()}"
        self._headers = httpx.Headers(headers)
        self._json_headers = httpx.Headers({**headers, "Content-Type": "application/json"})
        connect = settings.connect_timeout_s
        # per phase, the waits are ours (see stream); these bound connecting and sending
        self._timeouts = {"timeout": {"connect": connect, "read": None, "write": connect,
                                      "pool": connect}}
        self._transports = provider_transports(settings.http_stack,
                                               ssl_context=httpx.create_ssl_context(),
                                               proxy=env_proxy(self.base_url))

    @property
    def model(self) -> str:
        return self._model

    async def aclose(self) -> None:
        await self._transports.aclose()

    @staticmethod
    async def _send(transport: httpx.AsyncBaseTransport, request: httpx.Request
                    ) -> httpx.Response:
        response = await transport.handle_async_request(request)
        response.request = request
        return response

    def _request(self, method: str, url: httpx.URL, content: bytes | None = None
                 ) -> httpx.Request:
        headers = self._headers if content is None else self._json_headers
        return httpx.Request(method, url, headers=headers, content=content,
                             extensions=self._timeouts)

    async def available(self) -> bool:
        """Whether anything answers HTTP at the endpoint (any status counts)."""
        transport = self._transports.acquire()
        try:
            with anyio.fail_after(self.settings.connect_timeout_s * 2):
                response = await self._send(transport, self._request(
                    "GET", httpx.URL(f"{self.base_url}/models")))
            await response.aclose()
        except (TimeoutError, httpx.HTTPError):
            return False
        finally:
            self._transports.release(transport)
        return True

    def _body(self, prompt: Prompt) -> dict[str, Any]:
        s = self.settings
        max_tokens = min(prompt.max_tokens or s.max_tokens, s.max_tokens)
        body: dict[str, Any] = {"model": self._model, "messages": prompt.messages,
                                "stream": True, "max_tokens": max_tokens,
                                "temperature": s.temperature,
                                "stream_options": {"include_usage": True}}
        # only what is configured: a server may refuse a field it does not know
        if s.frequency_penalty is not None:
            body["frequency_penalty"] = s.frequency_penalty
        if s.presence_penalty is not None:
            body["presence_penalty"] = s.presence_penalty
        if s.repetition_penalty is not None:
            body[s.penalty_field] = s.repetition_penalty
        return body

    async def _open(self, transport: httpx.AsyncBaseTransport, prompt: Prompt,
                    timeout_s: float) -> httpx.Response:
        request = self._request("POST", self._url, _encode(self._body(prompt)))
        try:
            with anyio.fail_after(timeout_s):
                response = await self._send(transport, request)
        except TimeoutError:
            raise ProviderTimeoutError(self.name, f"no response within {timeout_s:.2f}s") from None
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ProviderConnectError(self.name, f"cannot connect to {self.base_url}: "
                                       f"{exc or type(exc).__name__}") from None
        except httpx.TransportError as exc:
            raise ProviderServerError(self.name, f"connection failed before a response: "
                                      f"{exc or type(exc).__name__}") from None
        if response.status_code == 200:
            return response
        try:
            with anyio.move_on_after(min(timeout_s, 2.0)):
                body = b""
                async for part in response.aiter_bytes():
                    body += part
                    if len(body) > _MAX_ERROR_BODY:
                        break
        except httpx.HTTPError:
            pass
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()
        raise classify_error(self.name, response.status_code, body,
                             response.headers.get("retry-after"))

    async def _drain(self, chunks: AsyncIterator[bytes]) -> None:
        """Read the end of the body after [DONE]: a connection whose response was read to
        the end goes back to the pool; one closed early costs a new TCP connection."""
        with anyio.move_on_after(0.5):
            try:
                async for _ in chunks:
                    pass
            except httpx.HTTPError:
                pass

    async def stream(self, prompt: Prompt, usage: Usage, *,
                     first_token_timeout_s: float) -> AsyncGenerator[str, None]:
        s = self.settings
        now = anyio.current_time()
        end = now + s.total_timeout_s
        first_by = now + min(first_token_timeout_s, s.total_timeout_s)
        transport = self._transports.acquire()  # held until the response is closed
        try:
            response = await self._open(transport, prompt, first_by - now)
        except BaseException:
            self._transports.release(transport)
            raise
        try:
            # SSE lines are split here rather than by httpx's aiter_lines: one timeout scope
            # per network read instead of per line, and msgspec decodes the bytes directly
            chunks = response.aiter_bytes()
            pending = b""
            started = False
            while True:
                now = anyio.current_time()
                limit = min(end, now + s.idle_timeout_s) if started else first_by
                try:
                    with anyio.fail_after(max(0.0, limit - now)):
                        chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    raise ProviderServerError(
                        self.name, "the stream ended without [DONE]") from None
                except TimeoutError:
                    what = ("no next token within the idle timeout" if started
                            else "no first token in time")
                    if limit == end:
                        what = f"not finished within total_timeout_s={s.total_timeout_s}"
                    raise ProviderTimeoutError(self.name, what) from None
                except httpx.TransportError as exc:
                    raise ProviderServerError(
                        self.name, f"connection lost mid-stream: {exc or type(exc).__name__}"
                    ) from None
                pending += chunk
                if b"\n" not in chunk:
                    continue
                lines = pending.split(b"\n")
                pending = lines.pop()
                for line in lines:
                    if not line.startswith(b"data:"):
                        continue  # blank separators, ": keep-alive" comments, event: lines
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        await self._drain(chunks)
                        return
                    try:
                        parsed = _decode_chunk(data)
                    except msgspec.DecodeError:
                        raise ProviderProtocolError(
                            self.name, f"not a chat-completions chunk: {data[:120]!r}"
                        ) from None
                    if parsed.error is not None:
                        raise classify_error(self.name, 0, {"error": parsed.error})
                    if parsed.usage is not None:
                        usage.prompt_tokens = parsed.usage.prompt_tokens
                        usage.completion_tokens = parsed.usage.completion_tokens
                    for choice in parsed.choices:
                        text = choice.delta.content
                        if text:
                            started = True
                            usage.deltas += 1
                            yield text
        finally:
            try:
                with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                    await response.aclose()
            finally:
                self._transports.release(transport)
