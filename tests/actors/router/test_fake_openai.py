"""The fake provider is a real HTTP server: plain httpx talks to it as to OpenAI."""

from __future__ import annotations

import json

import anyio
import httpx
import pytest

from tests.support.fake_openai import Behaviour, FakeOpenAI, closed_port_url

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi there"}], "stream": True,
        "stream_options": {"include_usage": True}}


async def _events(client: httpx.AsyncClient, url: str) -> list[dict[str, object] | str]:
    events: list[dict[str, object] | str] = []
    async with client.stream("POST", f"{url}/chat/completions", json=BODY) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                data = line[6:]
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


async def test_streams_chat_completion_chunks_usage_and_done_over_keep_alive() -> None:
    async with FakeOpenAI(Behaviour.counting(3)) as fake, httpx.AsyncClient() as client:
        first = await _events(client, fake.base_url)
        second = await _events(client, fake.base_url)
    def contents(events: list[dict[str, object] | str]) -> list[object]:
        return [e["choices"][0]["delta"].get("content")  # type: ignore[index]
                for e in events if isinstance(e, dict) and e["choices"]]

    assert contents(first) == contents(second) == ["", "t0 ", "t1 ", "t2 ", None]
    usage = next(e["usage"] for e in first if isinstance(e, dict) and "usage" in e)
    assert usage == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert first[-1] == "[DONE]"
    assert fake.counters.connections == 1  # the connection was reused
    assert [r.body["messages"] for r in fake.chat_requests] == [BODY["messages"]] * 2
    assert fake.disconnects == []


@pytest.mark.parametrize(("behaviour", "status", "text"), [
    (Behaviour.rate_limited(retry_after="7"), 429, "Rate limit"),
    (Behaviour.server_error(), 500, "server had an error"),
    (Behaviour.out_of_memory(), 500, "out of memory"),
    (Behaviour.auth_failure(), 401, "Invalid API key"),
])
async def test_scripted_faults_answer_the_next_request_only(
    behaviour: Behaviour, status: int, text: str
) -> None:
    async with FakeOpenAI() as fake, httpx.AsyncClient() as client:
        fake.script(behaviour)
        bad = await client.post(f"{fake.base_url}/chat/completions", json=BODY)
        good = await client.post(f"{fake.base_url}/chat/completions", json=BODY)
    assert bad.status_code == status
    assert text in bad.text
    if status == 429:
        assert bad.headers["retry-after"] == "7"
    assert good.status_code == 200


async def test_client_disconnect_mid_stream_is_recorded_with_tokens_sent() -> None:
    async with FakeOpenAI(Behaviour.counting(1000, pace_s=0.01)) as fake, \
            httpx.AsyncClient() as client:
        async with client.stream("POST", f"{fake.base_url}/chat/completions",
                                 json=BODY) as response:
            seen = 0
            async for line in response.aiter_lines():
                seen += '"content":"t' in line
                if seen == 3:
                    break
        await fake.wait_for_disconnects(1, timeout=2)
    gone = fake.disconnects[0]
    assert gone.request_index == 0
    assert 3 <= gone.tokens_sent < 1000


async def test_server_side_drop_mid_stream_is_not_a_client_disconnect() -> None:
    async with FakeOpenAI(Behaviour.disconnect_mid_stream(after=2)) as fake, \
            httpx.AsyncClient() as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await _events(client, fake.base_url)
    assert fake.disconnects == []


async def test_counts_concurrent_streams() -> None:
    async with FakeOpenAI(Behaviour.counting(5, pace_s=0.02)) as fake, \
            httpx.AsyncClient() as client, anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(_events, client, fake.base_url)
    assert fake.counters.max_streams == 4
    assert fake.counters.max_open_connections == 4
    assert fake.counters.completed == 4


async def test_closed_port_refuses_connections() -> None:
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"{closed_port_url()}/models")


async def test_records_are_served_over_http_and_can_wait_for_a_disconnect() -> None:
    async with FakeOpenAI(Behaviour.counting(1000, pace_s=0.01)) as fake, \
            httpx.AsyncClient() as client:
        async with client.stream("POST", f"{fake.base_url}/chat/completions",
                                 json=BODY) as response:
            async for line in response.aiter_lines():
                if '"content":"t' in line:
                    break
        waited = (await client.get(f"{fake.base_url}/_fake/records?disconnects=0")).json()
    assert waited["chat_requests"] == 1
    assert len(waited["disconnects"]) == 1
    assert waited["disconnects"][0]["at"] == fake.disconnects[0].at
