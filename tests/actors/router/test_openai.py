"""The OpenAI-compatible provider against a real loopback server, fault by fault."""

from __future__ import annotations

import contextlib
import email.utils
import time
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest

from ragbus.actors.router._aiohttp import AiohttpTransport
from ragbus.actors.router._errors import (
    ProviderAuthError,
    ProviderConnectError,
    ProviderError,
    ProviderOutOfMemoryError,
    ProviderRateLimitedError,
    ProviderRejectedError,
    ProviderServerError,
    ProviderTimeoutError,
)
from ragbus.actors.router._openai import OpenAIProvider, classify_error, parse_retry_after
from ragbus.actors.router._provider import Prompt, Usage
from ragbus.actors.router._transports import Pool, SharedTransport, env_proxy
from ragbus.config import HttpStack, ProviderSettings, Secret
from tests.support.fake_openai import Behaviour, FakeOpenAI, closed_port_url
from tests.support.proxy import forward_proxy

PROMPT = Prompt(messages=[{"role": "user", "content": "what is up"}], question="what is up",
                context=[], max_tokens=None, template="t:1")


_stack: list[HttpStack] = ["aiohttp"]


@pytest.fixture(autouse=True, params=["aiohttp", "httpx"])
def http_stack(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every behaviour here holds on both HTTP stacks a provider can be set to."""
    _stack[0] = request.param
    yield
    _stack[0] = "aiohttp"


@contextlib.asynccontextmanager
async def provider(url: str, **kw: object) -> AsyncIterator[OpenAIProvider]:
    settings = ProviderSettings(name="p", base_url=url, model="the-model",  # type: ignore[arg-type]
                                http_stack=_stack[0], **kw)
    p = OpenAIProvider(settings)
    try:
        yield p
    finally:
        await p.aclose()


async def collect(p: OpenAIProvider, usage: Usage | None = None, *,
                  first_token_timeout_s: float = 5.0, into: list[str] | None = None
                  ) -> list[str]:
    out: list[str] = [] if into is None else into
    gen = p.stream(PROMPT, usage or Usage(), first_token_timeout_s=first_token_timeout_s)
    async with contextlib.aclosing(gen):
        async for text in gen:
            out.append(text)
    return out


async def test_streams_deltas_and_reports_usage_with_key_model_and_limits() -> None:
    async with FakeOpenAI(Behaviour.counting(5)) as fake, \
            provider(fake.base_url, api_key=Secret("sk-test-123"), max_tokens=77,
                     temperature=0.5) as p:
        usage = Usage()
        assert await collect(p, usage) == [f"t{i} " for i in range(5)]
    assert usage.as_dict() == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    sent = fake.chat_requests[0]
    assert sent.headers["authorization"] == "Bearer sk-test-123"
    assert sent.body["model"] == "the-model"
    assert sent.body["max_tokens"] == 77
    assert sent.body["temperature"] == 0.5
    assert sent.body["stream"] is True
    assert sent.body["messages"] == PROMPT.messages


@pytest.mark.parametrize(("behaviour", "error"), [
    (Behaviour.rate_limited(retry_after="3"), ProviderRateLimitedError),
    (Behaviour.server_error(), ProviderServerError),
    (Behaviour.server_error(503), ProviderServerError),
    (Behaviour.out_of_memory(), ProviderOutOfMemoryError),
    (Behaviour.auth_failure(), ProviderAuthError),
    (Behaviour(status=400, error_body='{"error": {"message": "context too long"}}'),
     ProviderRejectedError),
])
async def test_error_statuses_become_typed_provider_errors(
    behaviour: Behaviour, error: type[ProviderError]
) -> None:
    async with FakeOpenAI(behaviour) as fake, provider(fake.base_url) as p:
        with pytest.raises(error) as caught:
            await collect(p)
    if isinstance(caught.value, ProviderRateLimitedError):
        assert caught.value.retry_after_s == 3.0


async def test_connection_refused_is_a_connect_error() -> None:
    async with provider(closed_port_url()) as p:
        with pytest.raises(ProviderConnectError, match="cannot connect"):
            await collect(p)


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment with no proxy variables, for a test to set its own."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


async def test_requests_go_through_the_proxy_the_environment_names(
    no_proxy_env: pytest.MonkeyPatch,
) -> None:
    async with FakeOpenAI(Behaviour.counting(3)) as fake, forward_proxy() as proxy:
        credentials = proxy.url.replace("http://", "http://me:s3cret@")
        no_proxy_env.setenv("HTTP_PROXY", credentials)
        async with provider(fake.base_url) as p:
            assert await collect(p) == ["t0 ", "t1 ", "t2 "]
    assert proxy.requests == [f"POST {fake.base_url}/chat/completions HTTP/1.1"]
    assert proxy.authorizations == ["Basic bWU6czNjcmV0"]  # me:s3cret
    assert len(fake.chat_requests) == 1


async def test_no_proxy_connects_straight_to_the_provider(
    no_proxy_env: pytest.MonkeyPatch,
) -> None:
    no_proxy_env.setenv("HTTP_PROXY", closed_port_url())  # would refuse, if it were used
    no_proxy_env.setenv("NO_PROXY", "localhost,127.0.0.1")
    async with FakeOpenAI(Behaviour.counting(2)) as fake, provider(fake.base_url) as p:
        assert await collect(p) == ["t0 ", "t1 "]


def test_the_proxy_is_picked_by_scheme_then_all_proxy_and_skipped_for_no_proxy(
    no_proxy_env: pytest.MonkeyPatch,
) -> None:
    assert env_proxy("https://api.groq.com/openai/v1") is None
    no_proxy_env.setenv("ALL_PROXY", "http://all:3128")
    no_proxy_env.setenv("https_proxy", "http://secure:3128")
    no_proxy_env.setenv("NO_PROXY", ".internal.example")
    assert env_proxy("https://api.groq.com/openai/v1") == "http://secure:3128"
    assert env_proxy("http://ollama.lan:11434/v1") == "http://all:3128"
    assert env_proxy("https://llm.internal.example/v1") is None


async def test_stall_before_first_token_times_out_and_closes_the_connection() -> None:
    async with FakeOpenAI(Behaviour.stall_before_first_token()) as fake, \
            provider(fake.base_url) as p:
        with pytest.raises(ProviderTimeoutError, match="no first token"):
            await collect(p, first_token_timeout_s=0.3)
        await fake.wait_for_disconnects(1, timeout=2)


async def test_stall_mid_stream_hits_the_idle_timeout_after_the_first_tokens() -> None:
    async with FakeOpenAI(Behaviour.stall_mid_stream(after=2)) as fake, \
            provider(fake.base_url, idle_timeout_s=0.3) as p:
        got: list[str] = []
        with pytest.raises(ProviderTimeoutError, match="idle"):
            await collect(p, into=got)
        assert got == ["t0 ", "t1 "]
        await fake.wait_for_disconnects(1, timeout=2)


async def test_disconnect_mid_stream_is_a_server_error() -> None:
    async with FakeOpenAI(Behaviour.disconnect_mid_stream(after=3)) as fake, \
            provider(fake.base_url) as p:
        got: list[str] = []
        with pytest.raises(ProviderServerError, match=r"connection lost|without \[DONE\]"):
            await collect(p, into=got)
    assert got == ["t0 ", "t1 ", "t2 "]


async def test_error_event_in_the_stream_is_classified_by_its_text() -> None:
    oom = Behaviour(error_event_after=1, error_event="llama_decode: out of memory")
    async with FakeOpenAI(oom) as fake, provider(fake.base_url) as p:
        with pytest.raises(ProviderOutOfMemoryError):
            await collect(p)


async def test_total_timeout_bounds_a_slow_but_steady_stream() -> None:
    async with FakeOpenAI(Behaviour.counting(100, pace_s=0.05)) as fake, \
            provider(fake.base_url, total_timeout_s=0.4, idle_timeout_s=5) as p:
        with pytest.raises(ProviderTimeoutError, match="total_timeout_s"):
            await collect(p)


async def test_closing_the_stream_early_closes_the_connection_at_once() -> None:
    async with FakeOpenAI(Behaviour.counting(10_000, pace_s=0.005)) as fake, \
            provider(fake.base_url) as p:
        gen = p.stream(PROMPT, Usage(), first_token_timeout_s=5)
        async with contextlib.aclosing(gen):
            async for _ in gen:
                break
        closed_at = time.perf_counter()
        await fake.wait_for_disconnects(1, timeout=2)
    assert fake.disconnects[0].at - closed_at < 0.5
    assert fake.disconnects[0].tokens_sent < 10_000


async def test_cancelling_the_reader_closes_the_connection() -> None:
    async with FakeOpenAI(Behaviour.counting(10_000, pace_s=0.005)) as fake, \
            provider(fake.base_url) as p:
        got: list[str] = []
        with anyio.move_on_after(0.2):
            gen = p.stream(PROMPT, Usage(), first_token_timeout_s=5)
            async with contextlib.aclosing(gen):
                async for text in gen:
                    got.append(text)
        await fake.wait_for_disconnects(1, timeout=2)
    assert got


async def test_available_means_anything_answers_http() -> None:
    async with FakeOpenAI() as fake, provider(fake.base_url) as up:
        assert await up.available()
    async with provider(closed_port_url(), connect_timeout_s=0.5) as down:
        assert not await down.available()


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    seconds = parse_retry_after(later)
    assert seconds is not None
    assert 25 < seconds <= 31


@pytest.mark.parametrize(("status", "body", "error"), [
    (500, b"model requires more system memory (8 GiB) than is available", ProviderOutOfMemoryError),
    (400, b'{"error": "CUDA error: out of memory"}', ProviderOutOfMemoryError),
    (403, b"forbidden", ProviderAuthError),
    (0, {"error": {"message": "boom"}}, ProviderServerError),
])
def test_classification_reads_the_error_text(status: int, body: object,
                                             error: type[ProviderError]) -> None:
    assert isinstance(classify_error("p", status, body), error)


async def test_concurrent_streams_share_one_tls_context() -> None:
    """A client making its own TLS context would load the CA bundle (20-30 ms of CPU)
    each time the httpx stack's pool grows; aiohttp's pool serves every stream."""
    async with FakeOpenAI(Behaviour.counting(3, pace_s=0.02)) as fake, \
            provider(fake.base_url) as p:
        results: list[list[str]] = []

        async def one() -> None:
            results.append(await collect(p))

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(one)
        transports = p._transports
        if isinstance(transports, SharedTransport):
            contexts = {id(transports.transport._ssl_context)}  # type: ignore[attr-defined]
        else:
            assert isinstance(transports, Pool)
            assert transports.size == 4  # one single-connection transport per stream
            contexts = {id(t._pool._ssl_context) for t in transports._all}
    assert results == [[f"t{i} " for i in range(3)]] * 4
    assert len(contexts) == 1


async def test_the_http_stack_setting_picks_the_transport() -> None:
    async with FakeOpenAI(Behaviour.counting(1)) as fake, provider(fake.base_url) as p:
        assert await collect(p) == ["t0 "]
        transport = p._transports.acquire()
        p._transports.release(transport)
    assert isinstance(transport, AiohttpTransport) == (_stack[0] == "aiohttp")
