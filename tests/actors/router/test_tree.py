"""``tree_summarize``: the context summarized group by group (map), then answered from the
summaries (reduce); real NATS, real HTTP providers on loopback.

The trimmer asks for it when more nodes survive than one pass should answer from
(``trimmer.tree_summarize_nodes``). Before, the mode was a label nothing read: all
the nodes went into one prompt like any other.
"""

from __future__ import annotations

import re
import time

import anyio
import msgspec
import pytest

from ragbus.actors.router import Router
from ragbus.actors.router._tree import MAP_VERSION, groups
from ragbus.config import Settings, TrimmerSettings
from ragbus.runtime import codec
from ragbus.runtime.connection import NATS
from ragbus.runtime.text import count_tokens
from ragbus.subjects import (
    Cancel,
    Cancelled,
    ContextNode,
    Done,
    Generate,
    QueryEvent,
    Subjects,
    Token,
    deadline_after,
)
from tests.actors.router._fixtures import GENERATE, ask, extractive, generate, openai, with_router
from tests.support import running
from tests.support.fake_openai import Behaviour, FakeOpenAI, RecordedRequest

QUESTION = "How many grams does widget 7 weigh?"
NODES = [ContextNode(chunk_id=f"c{i}", doc_id=f"d{i}", title=f"Widget {i}", score=1 - i / 100,
                     text=f"Widget {i} is painted shade {i} of green. Widget {i} weighs "
                          f"{i * 10 + 3} grams on the factory scale.")
         for i in range(1, 13)]
PASSAGE = re.compile(r"^\[(\d+)\] Widget (\d+)$", re.MULTILINE)


def tree(nc: NATS, **kw: object) -> Generate:
    kw.setdefault("question", QUESTION)
    return generate(nc, context=NODES, mode="tree_summarize", **kw)


def text_of(events: list[QueryEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, Token))


def is_map(request: RecordedRequest) -> bool:
    return "take notes" in request.body["messages"][0]["content"]


def passages(request: RecordedRequest) -> list[int]:
    """The passage numbers a prompt shows, each checked to be that node's own."""
    content = request.body["messages"][-1]["content"]
    found = [(int(n), int(w)) for n, w in PASSAGE.findall(content)]
    assert all(n == w for n, w in found), found  # numbered as the client will see them
    return [n for n, _ in found]


# -- grouping ------------------------------------------------------------------------------
def test_groups_are_contiguous_balanced_and_within_both_limits() -> None:
    assert groups([10] * 12, room=1000, max_nodes=10) == [list(range(6)), list(range(6, 12))]
    assert groups([10] * 25, room=1000, max_nodes=10) == [
        list(range(9)), list(range(9, 17)), list(range(17, 25))]
    # the tokens decide when they are the tighter limit
    got = groups([100, 100, 100, 100, 100, 100], room=250, max_nodes=10)
    assert got == [[0, 1], [2, 3], [4, 5]]
    assert groups([10, 10], room=1000, max_nodes=10) == [[0, 1]]


def test_a_node_larger_than_the_room_is_a_group_of_its_own() -> None:
    assert groups([10, 500, 10, 10], room=100, max_nodes=10) == [[0], [1], [2, 3]]


# -- map and reduce through the router -------------------------------------------------------
async def test_groups_are_summarized_concurrently_then_only_the_answer_streams(
    settings: Settings, nc: NATS
) -> None:
    maps = [Behaviour(tokens=("Widget 2 weighs 23 grams [2].",), first_token_delay_s=0.3),
            Behaviour(tokens=("Widget 7 weighs 73 grams [7].",), first_token_delay_s=0.3)]
    async with FakeOpenAI(Behaviour.counting(30)) as fake:
        fake.script(*maps)
        s = with_router(settings, [openai("llm", fake.base_url)])
        async with running(Router(s)):
            events = await ask(nc, tree(nc))
    done = events[-1]
    assert isinstance(done, Done), done
    first, second, reduce = fake.chat_requests
    assert (is_map(first), is_map(second), is_map(reduce)) == (True, True, False)
    assert fake.counters.max_streams >= 2  # the two map calls ran at once
    # each map call saw its own group, numbered as in the whole context, and the question
    assert sorted([passages(first), passages(second)]) == [list(range(1, 7)),
                                                            list(range(7, 13))]
    for request in (first, second):
        assert QUESTION in request.body["messages"][-1]["content"]
        assert request.body["max_tokens"] <= s.router.tree_summary_tokens
    # the answer is asked from the summaries, with the template's grounding and citations
    asked = reduce.body["messages"]
    assert asked[0]["content"].startswith("You answer questions using only")
    assert "Widget 2 weighs 23 grams [2]." in asked[-1]["content"]
    assert "Widget 7 weighs 73 grams [7]." in asked[-1]["content"]
    assert "painted shade" not in asked[-1]["content"]  # not the raw passages again
    assert QUESTION in asked[-1]["content"]
    # the client sees the answer only, in gapless runs
    assert text_of(events) == "".join(f"t{i} " for i in range(30))
    streamed = [e.seq for e in events if isinstance(e, Token)]
    assert streamed == list(range(len(streamed)))
    assert done.tree is not None
    assert (done.tree.groups, done.tree.map_calls, done.tree.summarized_by,
            done.tree.cut) == (2, 2, {"llm": 2}, 0)
    assert done.prompt_version == f"grounded:1+{MAP_VERSION}"
    assert 0 < done.timings_ms["tree_map"] < done.timings_ms["generation"]
    assert done.timings_ms["tree_reduce"] > 0
    assert done.usage["map_completion_tokens"] == 2
    assert done.usage["completion_tokens"] == 30


async def test_a_map_call_falls_back_along_the_chain_like_any_request(
    settings: Settings, nc: NATS
) -> None:
    async with FakeOpenAI(Behaviour.server_error()) as broken, \
            FakeOpenAI(Behaviour(tokens=("A note [3].",))) as working:
        s = with_router(settings, [openai("broken", broken.base_url),
                                   openai("working", working.base_url)])
        async with running(Router(s)) as (router,):
            events = await ask(nc, tree(nc))
            registry = router.metrics.registry
    done = events[-1]
    assert isinstance(done, Done), done
    assert done.provider == "working"
    assert len(broken.chat_requests) == 3  # two map calls and the answer, each tried first
    assert len(working.chat_requests) == 3
    assert done.tree is not None
    assert (done.tree.map_calls, done.tree.summarized_by) == (4, {"working": 2})
    assert registry.get_sample_value("ragbus_router_attempts_total", {
        "actor": "router", "provider": "broken", "outcome": "failed_server_error"}) == 3


async def test_groups_fit_the_smallest_window_in_the_chain(settings: Settings,
                                                          nc: NATS) -> None:
    # 330 tokens, 100 of them the answer's: the summaries must be short and the groups
    # small (at 1000 tokens both providers would take two groups of six)
    trimmer = TrimmerSettings(response_tokens=100, provider_context_tokens={"small": 330})
    s = msgspec.structs.replace(with_router(settings, []), trimmer=trimmer)
    async with FakeOpenAI(Behaviour(tokens=("Noted [1].",))) as big, \
            FakeOpenAI(Behaviour(tokens=("Noted [1].",))) as small:
        s = msgspec.structs.replace(s, router=msgspec.structs.replace(s.router, providers=[
            openai("big", big.base_url), openai("small", small.base_url)]))
        big.script(*[Behaviour.server_error()] * 20)  # every map call reaches "small"
        async with running(Router(s)):
            events = await ask(nc, tree(nc))
    done = events[-1]
    assert isinstance(done, Done), done
    maps = [r for r in small.chat_requests if is_map(r)]
    assert len(maps) > 2  # more groups than the node cap alone makes
    for request in maps:
        used = sum(count_tokens(m["content"]) for m in request.body["messages"])
        assert used + request.body["max_tokens"] <= 330
    shown = sorted(n for r in maps for n in passages(r))
    assert shown == list(range(1, 13))  # every node in exactly one group


async def test_cancel_during_the_map_step_hangs_up_every_map_call(
    settings: Settings, nc: NATS
) -> None:
    async with FakeOpenAI(Behaviour.stall_before_first_token()) as fake:
        s = with_router(settings, [openai("slow", fake.base_url, first_token_timeout_s=60)])
        async with running(Router(s)):
            request = tree(nc, deadline=deadline_after(20))
            sub = await nc.subscribe(request.reply_to)
            await nc.publish(GENERATE, codec.encode(request))
            await fake.wait_for_requests(2)
            await nc.publish(Subjects().cancel(request.request_id),
                             codec.encode(Cancel(request_id=request.request_id)))
            with anyio.fail_after(5):
                event = codec.decode((await sub.next_msg(5)).data, QueryEvent)
                await fake.wait_for_disconnects(2, timeout=5)
            await anyio.sleep(0.3)
    assert isinstance(event, Cancelled), event
    assert len(fake.chat_requests) == 2  # no answer was asked after the cancel


async def test_stalled_map_calls_fall_back_in_time_and_the_answer_still_comes(
    settings: Settings, nc: NATS
) -> None:
    """A map call gets the map step's time less the fallback reserve: the extractive last
    resort takes its group (best sentences, cited) and the answer keeps its own time."""
    async with FakeOpenAI(Behaviour(tokens=("Widget 7 weighs 73 grams.",))) as fake:
        fake.script(Behaviour.stall_before_first_token(), Behaviour.stall_before_first_token())
        s = with_router(settings, [openai("llm", fake.base_url, first_token_timeout_s=60)],
                        tree_map_share=0.4)
        async with running(Router(s)):
            started = time.monotonic()
            events = await ask(nc, tree(nc, deadline=deadline_after(4)), timeout=8)
            took = time.monotonic() - started
            await fake.wait_for_disconnects(2, timeout=2)  # the stalled map calls hung up
    done = events[-1]
    assert isinstance(done, Done), done
    assert took < 4
    assert done.tree is not None
    assert (done.tree.groups, done.tree.cut, done.tree.summarized_by) == (
        2, 0, {"extractive": 2})
    assert done.tree.map_calls == 4
    reduce = fake.chat_requests[-1]
    assert not is_map(reduce)
    assert "Widget 7 weighs 73 grams on the factory scale. [7]" in \
        reduce.body["messages"][-1]["content"]
    assert text_of(events) == "Widget 7 weighs 73 grams."


async def test_map_calls_that_run_out_of_time_are_quoted_and_the_answer_still_comes(
    settings: Settings, nc: NATS
) -> None:
    """Map calls still streaming when the map step's time is up are hung up; their
    groups go to the answer as their best sentences, quoted from the nodes."""
    async with FakeOpenAI(Behaviour(tokens=("Widget 7 weighs 73 grams.",))) as fake:
        fake.script(Behaviour.counting(10_000, pace_s=0.02),
                    Behaviour.counting(10_000, pace_s=0.02))
        s = with_router(settings, [openai("llm", fake.base_url)], tree_map_share=0.4)
        async with running(Router(s)):
            started = time.monotonic()
            events = await ask(nc, tree(nc, deadline=deadline_after(4)), timeout=8)
            took = time.monotonic() - started
            await fake.wait_for_disconnects(2, timeout=2)  # the stalled map calls hung up
    done = events[-1]
    assert isinstance(done, Done), done
    assert took < 4
    assert done.tree is not None
    assert (done.tree.groups, done.tree.cut, done.tree.summarized_by) == (2, 2, {})
    reduce = fake.chat_requests[-1]
    assert not is_map(reduce)
    # the groups stand in as their best sentences, quoted from the nodes and cited
    assert "Widget 7 weighs 73 grams on the factory scale. [7]" in \
        reduce.body["messages"][-1]["content"]
    assert text_of(events) == "Widget 7 weighs 73 grams."


async def test_the_extractive_provider_picks_the_best_sentences_per_group(
    settings: Settings, nc: NATS
) -> None:
    s = with_router(settings, [extractive()], extractive_sentences=2)
    async with running(Router(s)):
        events = await ask(nc, tree(nc, question="Which widgets weigh 23 or 113 grams?"))
    done = events[-1]
    assert isinstance(done, Done), done
    assert done.provider == "extractive"
    assert done.tree is not None
    assert (done.tree.groups, done.tree.map_calls) == (2, 0)  # no LLM: nothing to map with
    cited = re.findall(r"(.+?) \[(\d+)\](?: |$)", text_of(events))
    assert [int(n) for _, n in cited] == [2, 11]  # one from each group, cited to its node
    for sentence, number in cited:
        assert sentence in NODES[int(number) - 1].text


async def test_a_tree_summarized_answer_is_cached_like_any_other(
    settings: Settings, nc: NATS
) -> None:
    async with FakeOpenAI(Behaviour(tokens=("73 grams [7].",))) as fake:
        s = with_router(settings, [openai("llm", fake.base_url)])
        async with running(Router(s)):
            first = await ask(nc, tree(nc, cache_scope="scope-1"))
            again = await ask(nc, tree(nc, cache_scope="scope-1"))
            compact = await ask(nc, generate(nc, question=QUESTION, context=NODES,
                                             cache_scope="scope-1"))
    assert isinstance(first[-1], Done)
    assert isinstance(again[-1], Done)
    assert isinstance(compact[-1], Done)
    assert (first[-1].cache_hit, again[-1].cache_hit) == (False, True)
    assert again[-1].prompt_version == f"grounded:1+{MAP_VERSION}"
    assert text_of(again) == text_of(first)
    # a compact answer is another prompt: not served the tree's answer
    assert not compact[-1].cache_hit
    assert len(fake.chat_requests) == 3 + 1


@pytest.mark.parametrize("mode", ["compact", "tree_summarize"])
async def test_a_context_that_fits_one_group_is_answered_in_one_pass(
    settings: Settings, nc: NATS, mode: str
) -> None:
    async with FakeOpenAI(Behaviour(tokens=("73 grams [7].",))) as fake:
        s = with_router(settings, [openai("llm", fake.base_url)])
        async with running(Router(s)):
            events = await ask(nc, generate(nc, question=QUESTION, context=NODES[:4],
                                            mode=mode))
    done = events[-1]
    assert isinstance(done, Done)
    assert done.tree is None
    assert len(fake.chat_requests) == 1
    assert passages(fake.chat_requests[0]) == [1, 2, 3, 4]
