"""The router actor end to end: real NATS, real HTTP providers on loopback."""

from __future__ import annotations

import re

import anyio
import pytest

from ragbus.actors.router import Router
from ragbus.config import PromptTemplate, ProviderSettings, Settings
from ragbus.runtime import codec
from ragbus.runtime.connection import NATS
from ragbus.subjects import (
    BreakerState,
    Cancel,
    Cancelled,
    ContextNode,
    Done,
    ErrorCode,
    Failed,
    QueryEvent,
    Subjects,
    Token,
    TurnDone,
    deadline_after,
)
from tests.actors.router._fixtures import (
    CONTEXT,
    GENERATE,
    ask,
    extractive,
    generate,
    openai,
    with_router,
)
from tests.support import running
from tests.support.fake_openai import Behaviour, FakeOpenAI, closed_port_url


def tokens(events: list[QueryEvent]) -> list[Token]:
    return [e for e in events if isinstance(e, Token)]


def text_of(events: list[QueryEvent]) -> str:
    return "".join(t.text for t in tokens(events))


async def test_tokens_stream_in_order_then_done_with_provider_usage_and_timings(
    settings: Settings, nc: NATS
) -> None:
    async with FakeOpenAI(Behaviour.counting(40, pace_s=0.001)) as fake:
        s = with_router(settings, [openai("fast", fake.base_url)])
        async with running(Router(s)):
            events = await ask(nc, generate(nc))
    *streamed, done = events
    assert isinstance(done, Done)
    got = tokens(events)
    assert len(got) == len(streamed)
    assert [t.seq for t in got] == list(range(len(got)))
    assert text_of(events) == "".join(f"t{i} " for i in range(40))
    assert got[0].text == "t0 "  # the first token is not held back
    assert len(got) < 40  # the rest is coalesced
    assert done.text_length == len(text_of(events))
    assert (done.provider, done.model) == ("fast", "fast-model")
    assert done.usage["completion_tokens"] == 40
    assert done.usage["prompt_tokens"] > 0
    assert done.prompt_version == "grounded:1"
    assert 0 < done.timings_ms["first_token"] <= done.timings_ms["total"]
    sent = fake.chat_requests[0].body["messages"]
    assert "[1] Employee handbook" in sent[-1]["content"]


@pytest.mark.parametrize(("mode", "prompt_tokens", "answered_by", "local_calls", "cloud_calls"), [
    ("local-first", 0, "cloud", 1, 1),      # local fails, then cloud
    ("cloud-only", 0, "cloud", 0, 1),
    ("local-only", 0, "extractive", 1, 0),  # local fails, cloud is not allowed
    ("local-first", 5000, "cloud", 0, 1),   # over the local limit: straight to cloud
])
async def test_fallback_order_follows_the_mode(
    settings: Settings, nc: NATS, mode: str, prompt_tokens: int, answered_by: str,
    local_calls: int, cloud_calls: int
) -> None:
    async with FakeOpenAI(Behaviour.server_error()) as local, \
            FakeOpenAI(Behaviour.counting(3)) as cloud:
        s = with_router(settings, [openai("cloud", cloud.base_url, locality="cloud"),
                                   openai("local", local.base_url), extractive()], mode=mode)
        async with running(Router(s)):
            events = await ask(nc, generate(nc, prompt_tokens=prompt_tokens))
    done = events[-1]
    assert isinstance(done, Done), events[-1]
    assert done.provider == answered_by
    assert (len(local.chat_requests), len(cloud.chat_requests)) == (local_calls, cloud_calls)


@pytest.mark.parametrize("fault", [
    Behaviour.rate_limited(retry_after="30"), Behaviour.server_error(),
    Behaviour.out_of_memory(), Behaviour.auth_failure(), Behaviour.stall_before_first_token(),
    "refused",
], ids=["429", "500", "oom", "auth", "stall", "refused"])
async def test_any_error_before_the_first_token_falls_back_to_the_next_provider(
    settings: Settings, nc: NATS, fault: Behaviour | str
) -> None:
    async with FakeOpenAI(fault if isinstance(fault, Behaviour) else None) as first, \
            FakeOpenAI(Behaviour.counting(5)) as second:
        url = closed_port_url() if fault == "refused" else first.base_url
        s = with_router(settings, [openai("first", url, first_token_timeout_s=0.3),
                                   openai("second", second.base_url)])
        async with running(Router(s)):
            events = await ask(nc, generate(nc))
        if fault != "refused":
            assert len(first.chat_requests) == 1
        if isinstance(fault, Behaviour) and fault.stall_after == 0:
            await first.wait_for_disconnects(1, timeout=2)  # we hung up on the stall
    assert isinstance(events[-1], Done)
    assert events[-1].provider == "second"
    assert text_of(events) == "t0 t1 t2 t3 t4 "  # nothing from the failed provider


@pytest.mark.parametrize("fault", [
    Behaviour.stall_mid_stream(after=3), Behaviour.disconnect_mid_stream(after=3),
    Behaviour(tokens=("t0 ", "t1 ", "t2 ", "t3 "), error_event_after=3),
], ids=["stall", "disconnect", "error-event"])
async def test_a_failure_after_tokens_ends_the_stream_with_the_partial_length(
    settings: Settings, nc: NATS, fault: Behaviour
) -> None:
    async with FakeOpenAI(fault) as first, FakeOpenAI(Behaviour.counting(5)) as second:
        s = with_router(settings, [openai("first", first.base_url, idle_timeout_s=0.3),
                                   openai("second", second.base_url)])
        async with running(Router(s)):
            events = await ask(nc, generate(nc))
    failed = events[-1]
    assert isinstance(failed, Failed), failed
    assert failed.code == ErrorCode.UNAVAILABLE
    assert text_of(events) == "t0 t1 t2 "
    assert failed.partial_text_length == len("t0 t1 t2 ")
    assert failed.trace_id
    assert second.chat_requests == []  # no silent restart elsewhere


async def test_cancel_closes_the_provider_connection_and_no_token_follows(
    settings: Settings, nc: NATS
) -> None:
    async with FakeOpenAI(Behaviour.counting(10_000, pace_s=0.005)) as fake:
        s = with_router(settings, [openai("slow", fake.base_url)])
        async with running(Router(s)):
            request = generate(nc, deadline=deadline_after(10))
            sub = await nc.subscribe(request.reply_to)
            await nc.publish(GENERATE, codec.encode(request))
            received: list[QueryEvent] = []
            with anyio.fail_after(5):
                while len(tokens(received)) < 3:
                    received.append(codec.decode((await sub.next_msg(2)).data, QueryEvent))
                await nc.publish(Subjects().cancel(request.request_id),
                                 codec.encode(Cancel(request_id=request.request_id)))
                while not isinstance(received[-1], Cancelled):
                    received.append(codec.decode((await sub.next_msg(2)).data, QueryEvent))
                await fake.wait_for_disconnects(1, timeout=2)
            with anyio.move_on_after(0.3):  # nothing may follow the cancelled event
                after = await sub.next_msg(0.3)
                pytest.fail(f"an event arrived after Cancelled: {after.data!r}")
    cancelled = received[-1]
    assert isinstance(cancelled, Cancelled)
    assert cancelled.partial_text_length == len(text_of(received)) > 0
    assert cancelled.tokens_used >= len(tokens(received))
    assert fake.disconnects[0].tokens_sent < 10_000


async def test_deadline_mid_stream_fails_with_the_partial_length_and_hangs_up(
    settings: Settings, nc: NATS
) -> None:
    async with FakeOpenAI(Behaviour.stall_mid_stream(after=2)) as fake:
        s = with_router(settings, [openai("stuck", fake.base_url, idle_timeout_s=60)])
        async with running(Router(s)):
            events = await ask(nc, generate(nc, deadline=deadline_after(0.8)))
            await fake.wait_for_disconnects(1, timeout=2)
    failed = events[-1]
    assert isinstance(failed, Failed)
    assert failed.code == ErrorCode.DEADLINE_EXCEEDED
    assert text_of(events) == "t0 t1 "
    assert failed.partial_text_length == len("t0 t1 ")


async def test_a_stalled_provider_leaves_time_for_the_last_resort(
    settings: Settings, nc: NATS
) -> None:
    async with FakeOpenAI(Behaviour.stall_before_first_token()) as fake:
        s = with_router(settings, [openai("stuck", fake.base_url, first_token_timeout_s=60),
                                   extractive()], fallback_reserve_s=0.5,
                        breaker_failure_threshold=1)
        async with running(Router(s)) as (router,):
            events = await ask(nc, generate(nc, deadline=deadline_after(1.5)))
            # the wait was cut short by this request's deadline, not by the provider's own
            # first-token timeout: that is no evidence against the provider
            assert router.breakers.state("stuck") == BreakerState.CLOSED
    assert isinstance(events[-1], Done)
    assert events[-1].provider == "extractive"


async def test_when_every_provider_fails_the_client_gets_an_apology_with_the_trace_id(
    settings: Settings, nc: NATS
) -> None:
    async with FakeOpenAI(Behaviour.server_error()) as fake:
        s = with_router(settings, [openai("broken", fake.base_url), extractive()])
        async with running(Router(s)):
            events = await ask(nc, generate(nc, context=[]))  # nothing to extract either
    assert len(events) == 1
    failed = events[0]
    assert isinstance(failed, Failed)
    assert failed.code == ErrorCode.UNAVAILABLE
    assert failed.message.startswith("Sorry")
    assert failed.trace_id is not None
    assert failed.trace_id in failed.message
    assert [a["provider"] for a in failed.details["attempts"]] == ["broken", "extractive"]
    # with no context at all the likely cause is the question, not an outage: say so
    assert "no passage matched the question" in failed.message


async def test_when_every_provider_fails_despite_context_the_apology_asks_to_retry(
    settings: Settings, nc: NATS
) -> None:
    unextractable = [ContextNode(chunk_id="c1", doc_id="d1", score=1.0, text="Yes. No.")]
    async with FakeOpenAI(Behaviour.server_error()) as fake:
        s = with_router(settings, [openai("broken", fake.base_url), extractive()])
        async with running(Router(s)):
            events = await ask(nc, generate(nc, context=unextractable))
    (failed,) = events
    assert isinstance(failed, Failed)
    assert failed.code == ErrorCode.UNAVAILABLE
    assert "every provider failed. Please try again" in failed.message
    assert failed.trace_id is not None
    assert failed.trace_id in failed.message


async def test_extractive_answer_cites_real_chunks(settings: Settings, nc: NATS) -> None:
    s = with_router(settings, [extractive()])
    async with running(Router(s)):
        events = await ask(nc, generate(nc))
    done = events[-1]
    assert isinstance(done, Done)
    assert (done.provider, done.model) == ("extractive", "extractive")
    cited = re.findall(r"(.+?) \[(\d)\](?: |$)", text_of(events))
    assert cited
    for sentence, number in cited:
        assert sentence in CONTEXT[int(number) - 1].text
    assert "25 days of paid vacation" in cited[0][0]


async def test_a_finished_answer_with_a_session_is_appended_to_memory(
    settings: Settings, nc: NATS
) -> None:
    memory = await nc.subscribe(Subjects().memory_append)
    async with FakeOpenAI(Behaviour(tokens=("Twenty", "-five", " days."))) as fake:
        s = with_router(settings, [openai("llm", fake.base_url)])
        async with running(Router(s)):
            await ask(nc, generate(nc))  # no session: nothing to remember
            request = generate(nc, session_id="s-1")
            await ask(nc, request)
            turn = codec.decode((await memory.next_msg(2)).data, TurnDone)
            with anyio.move_on_after(0.2):
                extra = await memory.next_msg(0.2)
                pytest.fail(f"unexpected memory append: {extra.data!r}")
    assert (turn.session_id, turn.request_id) == ("s-1", request.request_id)
    assert turn.question == request.question
    assert turn.answer == "Twenty-five days."


async def test_the_rate_limit_is_honoured_by_skipping_to_the_next_provider(
    settings: Settings, nc: NATS
) -> None:
    async with FakeOpenAI(Behaviour.counting(2)) as fake:
        s = with_router(settings, [openai("limited", fake.base_url, rate_limit_per_minute=2),
                                   extractive()])
        async with running(Router(s)):
            answered = [(await ask(nc, generate(nc)))[-1] for _ in range(3)]
    assert [d.provider for d in answered if isinstance(d, Done)] == [
        "limited", "limited", "extractive"]
    assert len(fake.chat_requests) == 2


async def test_a_pinned_provider_is_the_only_llm_tried(settings: Settings, nc: NATS) -> None:
    async with FakeOpenAI(Behaviour.counting(2)) as a, FakeOpenAI(Behaviour.counting(2)) as b:
        s = with_router(settings, [openai("a", a.base_url), openai("b", b.base_url)])
        async with running(Router(s)):
            pinned = await ask(nc, generate(nc, provider="b"))
            unknown = await ask(nc, generate(nc, provider="nope"))
    assert isinstance(pinned[-1], Done)
    assert pinned[-1].provider == "b"
    assert (len(a.chat_requests), len(b.chat_requests)) == (0, 1)
    assert isinstance(unknown[-1], Failed)
    assert unknown[-1].code == ErrorCode.BAD_REQUEST
    assert "nope" in unknown[-1].message


async def test_session_keeps_its_ab_prompt_and_reports_the_version(
    settings: Settings, nc: NATS
) -> None:
    templates = [PromptTemplate(name="a", version="1", system="SYSTEM-A"),
                 PromptTemplate(name="b", version="7", system="SYSTEM-B")]
    async with FakeOpenAI(Behaviour.counting(1)) as fake:
        s = with_router(settings, [openai("llm", fake.base_url)], prompts=templates)
        async with running(Router(s)):
            versions = {}
            for i in range(12):
                done = (await ask(nc, generate(nc, session_id=f"user-{i % 6}")))[-1]
                assert isinstance(done, Done)
                versions.setdefault(f"user-{i % 6}", set()).add(done.prompt_version)
    assert all(len(v) == 1 for v in versions.values())  # a session never switches
    assert set().union(*versions.values()) == {"a:1", "b:7"}  # both arms are in use
    systems = {r.body["messages"][0]["content"] for r in fake.chat_requests}
    assert systems == {"SYSTEM-A", "SYSTEM-B"}


async def test_a_bad_message_gets_an_error_and_the_router_keeps_serving(
    settings: Settings, nc: NATS
) -> None:
    s = with_router(settings, [extractive()])
    async with running(Router(s)):
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish(GENERATE, b'{"request_id": "r1", "reply_to": "%s", "question": 7}'
                         % inbox.encode())
        bad = codec.decode((await sub.next_msg(2)).data, QueryEvent)
        events = await ask(nc, generate(nc))
    assert isinstance(bad, Failed)
    assert bad.code == ErrorCode.BAD_REQUEST
    assert isinstance(events[-1], Done)


async def test_provider_connections_are_reused_across_requests(settings: Settings,
                                                              nc: NATS) -> None:
    async with FakeOpenAI(Behaviour.counting(3)) as fake:
        s = with_router(settings, [openai("llm", fake.base_url)])
        async with running(Router(s)):
            for _ in range(3):
                assert isinstance((await ask(nc, generate(nc)))[-1], Done)
    assert len(fake.chat_requests) == 3
    assert fake.counters.connections == 1  # each answer was read to its end


async def test_an_optional_provider_that_does_not_answer_is_skipped(
    settings: Settings, nc: NATS
) -> None:
    async with FakeOpenAI(Behaviour.counting(2)) as up:
        s = with_router(settings, [openai("gone", closed_port_url(), optional=True),
                                   openai("up", up.base_url, optional=True)])
        async with running(Router(s)) as (router,):
            with anyio.fail_after(5):
                await router.probed.wait()
            assert list(router.down) == ["gone"]
            done = (await ask(nc, generate(nc)))[-1]
    assert isinstance(done, Done)
    assert done.provider == "up"


async def test_the_local_provider_is_skipped_until_the_local_llm_is_started(
    settings: Settings, nc: NATS
) -> None:
    s = with_router(settings, [ProviderSettings(name="local", kind="local"), extractive()])
    async with running(Router(s)) as (router,):
        assert "not started" in router.down["local"]
        pinned = (await ask(nc, generate(nc, provider="local")))[-1]
    assert isinstance(pinned, Done)
    assert pinned.provider == "extractive"


async def test_an_llm_only_request_is_never_answered_extractively(
    settings: Settings, nc: NATS
) -> None:
    """The conversation brief asks this way: sentences picked by word overlap with the
    summary instruction are no summary, so no LLM means UNAVAILABLE, not extractive."""
    async with FakeOpenAI(Behaviour.server_error()) as broken, \
            FakeOpenAI(Behaviour(tokens=("A summary.",))) as working:
        s = with_router(settings, [openai("broken", broken.base_url), extractive()])
        async with running(Router(s)):
            failed = await ask(nc, generate(nc, llm_only=True))
            plain = await ask(nc, generate(nc))  # the same chain answers other requests
        s = with_router(settings, [openai("working", working.base_url), extractive()])
        async with running(Router(s)):
            answered = await ask(nc, generate(nc, llm_only=True))
    (event,) = failed
    assert isinstance(event, Failed)
    assert event.code == ErrorCode.UNAVAILABLE
    assert [a["provider"] for a in event.details["attempts"]] == ["broken"]
    assert {"provider": "extractive", "reason": "the request asks for an LLM's answer"} in \
        event.details["skipped"]
    assert "no LLM provider answered" in event.message
    assert isinstance(plain[-1], Done)
    assert plain[-1].provider == "extractive"
    assert isinstance(answered[-1], Done)
    assert (answered[-1].provider, text_of(answered)) == ("working", "A summary.")
