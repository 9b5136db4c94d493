"""The context-trimmer on a real bus: real nats-server, the real embedder, real KV memory.

Where the router's part is what a test observes, a small stand-in router runs on
the same bus (a plain subscription, or an actor that streams a fixed summary).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import msgspec
import pytest

from ragbus.actors.embedder import Embedder
from ragbus.actors.router import Router
from ragbus.actors.trimmer import ContextTrimmer
from ragbus.actors.trimmer._compress import sentences
from ragbus.actors.trimmer._memory import (
    MemoryStore,
    SessionMemory,
    StoredTurn,
    memory_key,
    transcript,
)
from ragbus.actors.trimmer._trim import similarity
from ragbus.config import (
    NatsSettings,
    ProviderSettings,
    RouterSettings,
    RuntimeSettings,
    Settings,
    TrimmerSettings,
)
from ragbus.runtime import Actor, Client, Context, NotFoundError, codec, endpoint
from ragbus.runtime.connection import NATS
from ragbus.runtime.text import count_tokens, truncate
from ragbus.subjects import (
    ContextReady,
    Done,
    Embed,
    Embedded,
    ErrorCode,
    Failed,
    Generate,
    QueryEvent,
    SessionDelete,
    SessionDeleted,
    SessionGet,
    SessionInfo,
    SessionList,
    SessionListed,
    Source,
    Subjects,
    Token,
    Trace,
    Trim,
    TurnDone,
    deadline_after,
    now_ms,
)
from tests.support import running
from tests.support.waiting import wait_for

S = Subjects()


def make_settings(nats_url: str, **trimmer: Any) -> Settings:
    # what is kept is under test, not how fast: a loaded machine must not fall back
    trimmer.setdefault("embed_timeout_s", 60.0)
    return Settings(
        nats=NatsSettings(url=nats_url, max_reconnect_attempts=2, reconnect_time_wait_s=0.1),
        runtime=RuntimeSettings(concurrency=8, default_timeout_s=10.0, drain_grace_s=1.0),
        trimmer=TrimmerSettings(**trimmer),
    )


def hit(i: int, text: str, score: float) -> Source:
    return Source(doc_id=f"doc{i}", chunk_id=f"chunk{i}", score=score, text=text,
                  title=f"title {i}")


async def events_of(nc: NATS, trim: Trim) -> list[QueryEvent]:
    return [e async for e in Client(nc).stream(S.trim, trim, timeout=10)]


async def handoff(nc: NATS, trim: Trim) -> tuple[list[QueryEvent], Generate]:
    """Send ``trim`` (generate=True) and catch what reaches reply_to and the router."""
    events = await nc.subscribe(trim.reply_to)
    router = await nc.subscribe(S.generate)  # the router's stand-in
    await nc.publish(S.trim, codec.encode(trim))
    msg = await router.next_msg(timeout=10)
    generate: Generate = codec.decode(msg.data, Generate)
    got: list[QueryEvent] = []
    while events.pending_msgs:
        got.append(codec.decode((await events.next_msg(timeout=1)).data, QueryEvent))
    await events.unsubscribe()
    await router.unsubscribe()
    return got, generate


async def stored(nc: NATS, session_id: str, ready: Callable[[SessionMemory], bool],
                 timeout: float = 8.0) -> SessionMemory:
    """The session's memory once ``ready`` holds (turns are stored asynchronously)."""
    store = MemoryStore(await nc.jetstream().key_value(S.bucket("memory")))
    with anyio.fail_after(timeout):
        while True:
            memory, _ = await store.get(session_id)
            if memory is not None and ready(memory):
                return memory
            await anyio.sleep(0.02)


def turn_done(session_id: str, i: int) -> TurnDone:
    return TurnDone(session_id=session_id, request_id=f"req{i}", question=f"What is item {i}?",
                    answer=f"Item {i} is a small blue widget made in factory {i}.", at=now_ms())


def seen(t: TurnDone) -> Callable[[SessionMemory], bool]:
    return lambda memory: t.request_id in memory.seen


def as_stored(t: TurnDone) -> StoredTurn:
    return StoredTurn(request_id=t.request_id, question=t.question, answer=t.answer, at=t.at)


# -- context --------------------------------------------------------------------------------


async def test_a_retrieval_only_query_gets_its_ranked_deduplicated_context_then_done(
    nats_url: str, nc: NATS
) -> None:
    text = ("Insulin lowers blood glucose by helping muscle, fat and liver cells take up sugar "
            "from the blood. It is released by beta cells in the pancreas after a meal, when "
            "glucose levels rise, and it also tells the liver to store glucose as glycogen "
            "rather than release more of it into the circulation.")
    hits = [
        hit(0, "Glucagon raises blood glucose when it falls too low.", 0.41),
        hit(1, text, 0.92),
        hit(2, text.replace("meal", "large meal"), 0.35),  # a near-duplicate of hit 1
        hit(3, "   ", 0.99),
        hit(4, "The pancreas makes both hormones in the islets of Langerhans.", 0.77),
    ]
    question = "How does insulin lower blood sugar?"
    trim = Trim(question=question, sources=hits, generate=False, reply_to=nc.new_inbox(),
                timings_ms={"retrieve": 12.5})
    async with running(ContextTrimmer(make_settings(nats_url))) as (trimmer,):
        events = await events_of(nc, trim)
    assert [type(e) for e in events] == [ContextReady, Done]
    ready, done = events
    assert isinstance(ready, ContextReady)
    assert isinstance(done, Done)
    assert [n.chunk_id for n in ready.nodes] == ["chunk1", "chunk4", "chunk0"]
    assert ready.nodes[0].text == text  # it fitted: unchanged
    info = ready.trim_info
    context = sum(count_tokens(n.text) for n in ready.nodes)
    assert (info.nodes_before, info.nodes_after, info.compressed, info.mode) == (
        5, 3, False, "compact")
    assert info.context_tokens_after == context
    assert info.context_tokens_before == context + count_tokens(hits[2].text)
    assert info.tokens_removed == count_tokens(hits[2].text)
    assert info.tokens_used == count_tokens(question) + context
    assert info.tokens_available == 2000
    assert done.request_id == ready.request_id == trim.request_id
    assert done.timings_ms["retrieve"] == 12.5
    assert done.timings_ms["trim"] > 0
    registry = trimmer.metrics.registry
    labels = {"actor": "context-trimmer"}
    assert registry.get_sample_value("ragbus_token_budget_used_sum", labels) == info.tokens_used
    assert registry.get_sample_value("ragbus_token_budget_remaining_sum", labels) == (
        2000 - info.tokens_used)
    assert registry.get_sample_value("ragbus_token_budget_overflows_count", labels) == 0


PLACES = ["lighthouse", "bakery", "library", "harbour", "stadium", "vineyard", "museum",
          "railway station", "market hall", "observatory", "ferry terminal", "town square",
          "boathouse", "greenhouse"]
COLOURS = ["green", "yellow", "crimson", "grey", "blue", "white", "orange", "violet"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
TEMPLATES = [
    "The {place} was repainted {colour} before the {n}th summer fair.",
    "On {day}s the {place} opens at {n} o'clock and closes after dusk.",
    "A storm in year {n} tore {k} tiles from the roof of the {place}.",
    "Visitors to the {place} can rent {k} bicycles for {n} coins a day.",
    "The {place} stores {n} crates of {colour} paint in its cellar.",
    "Every {day} a choir of {k} singers rehearses beside the {place}.",
]
RELEVANT = [
    "Vaccines expose the immune system to a harmless piece of a virus so that it learns to "
    "recognise it.",
    "After vaccination, memory B cells remember the viral antigen and respond quickly to a "
    "later infection.",
    "A vaccine trains antibodies to recognise the spike protein on the surface of the virus.",
    "Immunisation teaches the body's immune cells to identify the virus before any real "
    "exposure.",
    "mRNA vaccines make cells produce a viral protein that the immune system then learns to "
    "recognise.",
    "The immune response primed by a vaccine lets the body recognise and fight the virus much "
    "faster.",
]
VACCINE_QUESTION = "How does a vaccine teach the immune system to recognise a virus?"


def filler(node: int, j: int) -> str:
    return TEMPLATES[(node + j) % len(TEMPLATES)].format(
        place=PLACES[(node * 3 + j) % len(PLACES)], colour=COLOURS[(node + 2 * j) % len(COLOURS)],
        day=DAYS[(node * 2 + j) % len(DAYS)], n=100 + node * 17 + j, k=3 + (node * 5 + j) % 11)


def vaccine_hits() -> list[Source]:
    """Eight ~270-token hits (well over the 1500-token context budget together): six with
    one sentence about the question buried among sentences about something else, two
    lower-ranked ones about something else only."""
    hits = []
    for i in range(8):
        parts = [filler(i, j) for j in range(16)]
        if i < len(RELEVANT):
            parts.insert((i * 5) % 16, RELEVANT[i])
        hits.append(hit(i, " ".join(parts), 0.9 - i * 0.05))
    texts = [h.text for h in hits]
    assert sum(count_tokens(t) for t in texts) > 2000
    assert max(similarity(a, b) for i, a in enumerate(texts) for b in texts[i + 1:]) < 0.5
    return hits


@pytest.mark.parametrize("method", ["lexical", "embedding"])
async def test_an_over_budget_context_keeps_the_sentences_about_the_question(
    nats_url: str, nc: NATS, method: str
) -> None:
    # the embedder's answer is waited for however busy the machine is: what is kept is
    # the point here, the timeout has its own test
    settings = make_settings(nats_url, compression=method, embed_timeout_s=60.0)
    hits = vaccine_hits()

    def trim(sources: list[Source]) -> Trim:
        return Trim(question=VACCINE_QUESTION, sources=sources, generate=False,
                    reply_to=nc.new_inbox())

    async with running(Embedder(settings), ContextTrimmer(settings)) as (_, trimmer):
        over_hard = await events_of(nc, trim(hits))  # > 2000 tokens: over the 1500 cap
        over_soft = await events_of(nc, trim(hits[:4]))  # ~1100: over compress_above_tokens
        small = await events_of(nc, trim(hits[:3]))  # ~820: sent as it is
    ready = over_hard[0]
    assert isinstance(ready, ContextReady), over_hard
    info = ready.trim_info
    assert info.compressed
    assert [n.chunk_id for n in ready.nodes] == [h.chunk_id for h in hits]
    # the seed target: at least half of the context tokens gone
    assert info.context_tokens_after <= info.context_tokens_before / 2
    assert info.tokens_removed == info.context_tokens_before - info.context_tokens_after
    for node, relevant in zip(ready.nodes, RELEVANT, strict=False):
        assert relevant in node.text  # the one sentence about vaccines survived
    for node, source in zip(ready.nodes, hits, strict=True):
        kept = sentences(node.text)
        assert set(kept) <= set(sentences(source.text))  # nothing rewritten, only left out
        # in the order the source had them
        positions = [source.text.index(s) for s in kept]
        assert positions == sorted(positions)

    assert isinstance(over_soft[0], ContextReady)
    soft = over_soft[0].trim_info
    assert 1000 < soft.context_tokens_before <= 1500
    assert soft.compressed
    assert soft.context_tokens_after <= soft.context_tokens_before / 2
    assert isinstance(small[0], ContextReady)
    assert not small[0].trim_info.compressed
    assert [n.text for n in small[0].nodes] == [h.text for h in hits[:3]]

    labels = {"actor": "context-trimmer"}
    registry = trimmer.metrics.registry
    assert registry.get_sample_value("ragbus_token_budget_overflows_count", labels) == 1
    ratios = registry.get_sample_value("ragbus_context_compression_ratio_sum", labels)
    assert ratios == pytest.approx(
        info.context_tokens_after / info.context_tokens_before
        + soft.context_tokens_after / soft.context_tokens_before + 1.0)


async def test_the_retrievers_question_vector_is_used_for_compression(
    nats_url: str, nc: NATS
) -> None:
    settings = make_settings(nats_url, compression="embedding", embed_timeout_s=60.0)
    hits = vaccine_hits()[:5]
    client = Client(nc)

    async def context(vector: bytes | None) -> ContextReady:
        events = await events_of(nc, Trim(question=VACCINE_QUESTION, sources=hits,
                                          generate=False, reply_to=nc.new_inbox(),
                                          question_vector=vector))
        assert isinstance(events[0], ContextReady), events
        return events[0]

    async with running(Embedder(settings), ContextTrimmer(settings)):
        same = (await client.request(S.embed, Embed(texts=[VACCINE_QUESTION]), Embedded)).vectors
        other = (await client.request(S.embed, Embed(texts=["When does the lighthouse open?"]),
                                      Embedded)).vectors
        own = await context(None)
        given = await context(same)
        misleading = await context(other)
        wrong_size = await context(b"\x00" * 12)
    assert own.trim_info.compressed
    assert given.nodes == own.nodes  # the same vector the trimmer would have made
    # the sentences kept follow the vector that came with the hits, not the question text
    assert misleading.trim_info.compressed
    assert [n.text for n in misleading.nodes] != [n.text for n in own.nodes]
    def mentions(ready: ContextReady, word: str) -> int:
        return sum(n.text.count(word) for n in ready.nodes)

    assert mentions(misleading, "lighthouse") > mentions(own, "lighthouse")
    assert mentions(misleading, "vaccin") < mentions(own, "vaccin")
    # a vector of another model cannot be compared with the sentences: no compression
    assert not wrong_size.trim_info.compressed
    assert [n.text for n in wrong_size.nodes] == [h.text for h in hits]


async def test_lexical_compression_needs_no_embedder(nats_url: str, nc: NATS) -> None:
    hits = vaccine_hits()
    trim = Trim(question=VACCINE_QUESTION, sources=hits, generate=False,
                reply_to=nc.new_inbox())
    async with running(ContextTrimmer(make_settings(nats_url))):  # the default: lexical
        events = await events_of(nc, trim)
    ready = events[0]
    assert isinstance(ready, ContextReady), events
    assert ready.trim_info.compressed
    assert [n.chunk_id for n in ready.nodes] == [h.chunk_id for h in hits]
    for node, relevant in zip(ready.nodes, RELEVANT, strict=False):
        assert relevant in node.text


async def test_compression_off_only_trims(nats_url: str, nc: NATS) -> None:
    hits = vaccine_hits()
    trim = Trim(question=VACCINE_QUESTION, sources=hits[:4], generate=False,
                reply_to=nc.new_inbox())
    async with running(ContextTrimmer(make_settings(nats_url, compression="off"))):
        events = await events_of(nc, trim)
    ready = events[0]
    assert isinstance(ready, ContextReady), events
    assert not ready.trim_info.compressed  # ~1100 tokens: over the soft budget, under the cap
    assert [n.text for n in ready.nodes] == [h.text for h in hits[:4]]


async def test_without_an_embedder_embedding_compression_leaves_the_context_uncompressed(
    nats_url: str, nc: NATS
) -> None:
    hits = vaccine_hits()
    trim = Trim(question=VACCINE_QUESTION, sources=hits, generate=False,
                reply_to=nc.new_inbox())
    async with running(ContextTrimmer(make_settings(nats_url, compression="embedding"))):
        events = await events_of(nc, trim)
    ready = events[0]
    assert isinstance(ready, ContextReady), events
    assert isinstance(events[1], Done)
    info = ready.trim_info
    assert not info.compressed
    assert info.context_tokens_after <= 1500
    assert info.tokens_used <= info.tokens_available
    kept = ready.nodes
    # the lowest-scored hit went first; the last kept one was cut to fill the budget
    assert [n.chunk_id for n in kept] == [h.chunk_id for h in hits[:len(kept)]]
    assert len(kept) < len(hits)
    assert [n.text for n in kept[:-1]] == [h.text for h in hits[:len(kept) - 1]]
    assert hits[len(kept) - 1].text.startswith(kept[-1].text)


async def test_many_surviving_nodes_switch_to_tree_summarize(nats_url: str, nc: NATS) -> None:
    hits = [hit(i, f"Fact number {i}: the {PLACES[i]} is {COLOURS[i % 8]}.", 1 - i / 20)
            for i in range(12)]
    settings = make_settings(nats_url)
    async with running(ContextTrimmer(settings)):
        many = await events_of(nc, Trim(question="Colours?", sources=hits, generate=False,
                                        reply_to=nc.new_inbox()))
        few = await events_of(nc, Trim(question="Colours?", sources=hits[:10], generate=False,
                                       reply_to=nc.new_inbox()))
    assert isinstance(many[0], ContextReady)
    assert isinstance(few[0], ContextReady)
    assert (many[0].trim_info.nodes_after, many[0].trim_info.mode) == (12, "tree_summarize")
    assert (few[0].trim_info.nodes_after, few[0].trim_info.mode) == (10, "compact")


# -- the hand-off to the router -------------------------------------------------------------


async def test_generate_carries_the_envelope_context_and_memory_to_the_router(
    nats_url: str, nc: NATS
) -> None:
    first = turn_done("session-1", 1)
    trace = Trace(trace_id="a" * 32)
    deadline = deadline_after(20)
    trim = Trim(question="And which factory made item 1?", reply_to=nc.new_inbox(),
                sources=[hit(0, "Factory 1 is in Lyon.", 0.8)], session_id="session-1",
                provider="local", deadline=deadline, trace=trace, timings_ms={"embed": 3.0},
                cache_scope="scope-1", question_vector=b"\x00\x00\x80\x3f" * 4)
    async with running(ContextTrimmer(make_settings(nats_url))):
        await nc.publish(S.memory_append, codec.encode(first))
        await stored(nc, "session-1", lambda m: len(m.turns) == 1)
        events, generate = await handoff(nc, trim)
    (ready,) = events
    assert isinstance(ready, ContextReady)
    assert generate.request_id == trim.request_id
    assert generate.deadline == deadline
    assert generate.trace is not None
    assert generate.trace.trace_id == trace.trace_id
    assert generate.reply_to == trim.reply_to
    assert generate.question == trim.question
    assert generate.context == ready.nodes
    assert generate.trim_info == ready.trim_info
    assert [(t.role, t.content) for t in generate.history] == [
        ("user", first.question), ("assistant", first.answer)]
    assert generate.brief is None
    assert generate.session_id == "session-1"
    assert generate.provider == "local"
    # what the router's answer cache needs travels on untouched
    assert generate.cache_scope == "scope-1"
    assert generate.question_vector == trim.question_vector
    assert generate.max_tokens == 1000
    assert generate.mode == "compact"
    info = ready.trim_info
    assert (info.memory_turns, info.memory_tokens) == (
        1, count_tokens(first.question) + count_tokens(first.answer))
    assert generate.prompt_tokens == info.tokens_used == (
        count_tokens(trim.question) + info.memory_tokens + info.context_tokens_after)
    assert generate.timings_ms["embed"] == 3.0
    assert "trim" in generate.timings_ms


async def test_with_no_router_the_query_fails_unavailable_instead_of_waiting(
    nats_url: str, nc: NATS
) -> None:
    trim = Trim(question="Anyone there?", sources=[hit(0, "Some context.", 0.5)],
                reply_to=nc.new_inbox(), deadline=deadline_after(30))
    async with running(ContextTrimmer(make_settings(nats_url))):
        events = await events_of(nc, trim)
    assert isinstance(events[0], ContextReady)
    failed = events[1]
    assert isinstance(failed, Failed)
    assert failed.code == ErrorCode.UNAVAILABLE  # said at once, not DEADLINE_EXCEEDED
    assert "router" in failed.message


async def test_bad_trims_get_error_events_and_the_actor_keeps_serving(
    nats_url: str, nc: NATS
) -> None:
    async with running(ContextTrimmer(make_settings(nats_url))):
        empty = await events_of(nc, Trim(question="  ", sources=[], reply_to=nc.new_inbox()))
        long = await events_of(nc, Trim(question="why " * 600, sources=[],
                                        reply_to=nc.new_inbox()))
        ragged = await events_of(nc, Trim(question="Vector?", sources=[], generate=False,
                                          question_vector=b"\x00" * 5,
                                          reply_to=nc.new_inbox()))
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish(S.trim, b'{"request_id": "r1", "reply_to": "' + inbox.encode()
                         + b'", "question": 42}')
        garbled = codec.decode((await sub.next_msg(timeout=5)).data, QueryEvent)
        ok = await events_of(nc, Trim(question="Still there?", sources=[], generate=False,
                                      reply_to=nc.new_inbox()))
    assert isinstance(empty[0], Failed)
    assert empty[0].code == ErrorCode.BAD_REQUEST
    assert isinstance(long[0], Failed)
    assert long[0].code == ErrorCode.TOO_LARGE
    assert "trimmer.question_tokens" in long[0].message
    assert isinstance(ragged[0], Failed)
    assert ragged[0].code == ErrorCode.BAD_REQUEST
    assert "question_vector" in ragged[0].message
    assert isinstance(garbled, Failed)
    assert garbled.code == ErrorCode.BAD_REQUEST
    assert garbled.request_id == "r1"
    assert [type(e) for e in ok] == [ContextReady, Done]
    assert isinstance(ok[0], ContextReady)
    assert ok[0].nodes == []


# -- conversation memory --------------------------------------------------------------------


async def test_memory_expires_after_its_ttl(nats_url: str, nc: NATS) -> None:
    settings = make_settings(nats_url, memory_ttl_s=1.0)
    trim = Trim(question="Remember me?", sources=[], session_id="brief-life", generate=False,
                reply_to=nc.new_inbox())
    store = None
    async with running(ContextTrimmer(settings)):
        await nc.publish(S.memory_append, codec.encode(turn_done("brief-life", 1)))
        await stored(nc, "brief-life", lambda m: len(m.turns) == 1)
        before = await events_of(nc, trim)
        store = MemoryStore(await nc.jetstream().key_value(S.bucket("memory")))
        with anyio.fail_after(8):
            while (await store.get("brief-life"))[0] is not None:  # noqa: ASYNC110 - polling KV
                await anyio.sleep(0.1)
        after = await events_of(nc, Trim(question="Remember me?", sources=[],
                                         session_id="brief-life", generate=False,
                                         reply_to=nc.new_inbox()))
    assert isinstance(before[0], ContextReady)
    assert isinstance(after[0], ContextReady)
    assert before[0].trim_info.memory_turns == 1
    assert after[0].trim_info.memory_turns == 0
    status = await store.kv.status()
    assert status.ttl == 1.0  # the TTL is the bucket's, from trimmer.memory_ttl_s


async def test_a_turn_answered_while_its_session_is_deleted_is_not_stored_afterwards(
    nats_url: str, nc: NATS
) -> None:
    """The router publishes TurnDone when the answer ends; a session deleted meanwhile
    must stay deleted (it used to be created again by that late turn)."""
    client = Client(nc)
    async with running(ContextTrimmer(make_settings(nats_url))) as (trimmer,):

        def turns(outcome: str) -> float:
            return trimmer.metrics.registry.get_sample_value(
                "ragbus_memory_turns_total", {"actor": "context-trimmer", "outcome": outcome}) or 0

        await nc.publish(S.memory_append, codec.encode(turn_done("forget-me", 1)))
        await wait_for(lambda: turns("stored") == 1)
        deleted = await client.request(S.session("delete"),
                                       SessionDelete(session_id="forget-me"), SessionDeleted)
        # the turn in flight arrives, and a redelivery of the first: both after the delete
        for late in (turn_done("forget-me", 2), turn_done("forget-me", 1)):
            await nc.publish(S.memory_append, codec.encode(late))
        await wait_for(lambda: turns("deleted") == 2)
        assert turns("stored") == 1
        with pytest.raises(NotFoundError, match="forget-me"):
            await client.request(S.session("get"), SessionGet(session_id="forget-me"),
                                 SessionInfo)
        listed = await client.request(S.session("list"), SessionList(), SessionListed)
        recalled = await events_of(nc, Trim(question="Remember me?", sources=[],
                                            session_id="forget-me", generate=False,
                                            reply_to=nc.new_inbox()))
        again = await client.request(S.session("delete"),
                                     SessionDelete(session_id="forget-me"), SessionDeleted)
    assert (deleted.existed, deleted.turns) == (True, 1)
    assert "forget-me" not in [s.session_id for s in listed.sessions]
    assert isinstance(recalled[0], ContextReady)
    assert recalled[0].trim_info.memory_turns == 0
    assert not again.existed


async def test_a_changed_ttl_setting_applies_to_the_existing_bucket(
    nats_url: str, nc: NATS
) -> None:
    async with running(ContextTrimmer(make_settings(nats_url))):
        await nc.publish(S.memory_append, codec.encode(turn_done("kept", 1)))
        await stored(nc, "kept", lambda m: len(m.turns) == 1)
    kv = await nc.jetstream().key_value(S.bucket("memory"))
    assert (await kv.status()).ttl == 30 * 24 * 3600
    async with running(ContextTrimmer(make_settings(nats_url, memory_ttl_s=2.0))):
        memory = await stored(nc, "kept", lambda m: len(m.turns) == 1)  # nothing lost
    assert (await kv.status()).ttl == 2.0
    assert memory.turns[0].request_id == "req1"


async def test_a_repeated_turn_is_stored_once(nats_url: str, nc: NATS) -> None:
    t = turn_done("dup", 1)
    async with running(ContextTrimmer(make_settings(nats_url))):
        for _ in range(3):
            await nc.publish(S.memory_append, codec.encode(t))
        await nc.publish(S.memory_append, codec.encode(turn_done("dup", 2)))
        memory = await stored(nc, "dup", lambda m: any(x.request_id == "req2" for x in m.turns))
    assert [x.request_id for x in memory.turns] == ["req1", "req2"]


async def test_turns_stored_at_once_by_two_replicas_are_all_kept(
    nats_url: str, nc: NATS
) -> None:
    settings = make_settings(nats_url, memory_turns=50, memory_tokens=5000)
    turns = [turn_done("busy", i) for i in range(16)]
    async with running(ContextTrimmer(settings), ContextTrimmer(settings)):
        for t in turns:
            await nc.publish(S.memory_append, codec.encode(t))
        memory = await stored(nc, "busy", lambda m: len(m.turns) == 16)
    assert sorted(x.request_id for x in memory.turns) == sorted(t.request_id for t in turns)


async def test_oldest_turns_fold_into_a_truncated_brief_when_no_router_answers(
    nats_url: str, nc: NATS
) -> None:
    settings = make_settings(nats_url, memory_turns=2, brief_tokens=12)
    turns = [turn_done("fold", i) for i in range(4)]
    async with running(ContextTrimmer(settings)) as (trimmer,):
        for t in turns[:3]:
            await nc.publish(S.memory_append, codec.encode(t))
            await stored(nc, "fold", seen(t))
        third = await stored(nc, "fold", lambda m: m.folded == 1)
        await nc.publish(S.memory_append, codec.encode(turns[3]))
        fourth = await stored(nc, "fold", lambda m: m.folded == 2)
        events, generate = await handoff(nc, Trim(question="So?", sources=[],
                                                  session_id="fold", reply_to=nc.new_inbox()))
    first_brief = truncate(transcript(None, [as_stored(turns[0])]), 12, keep="tail")
    assert third.brief == first_brief
    assert [x.request_id for x in third.turns] == ["req1", "req2"]
    # the running brief folds on: the old brief and the next turn, cut to the most recent
    assert fourth.brief == truncate(transcript(first_brief, [as_stored(turns[1])]), 12,
                                    keep="tail")
    assert [x.request_id for x in fourth.turns] == ["req2", "req3"]
    assert generate.brief == fourth.brief
    assert fourth.brief_source == "fallback"
    assert generate.trim_info.brief_source == "fallback"
    assert [t.content for t in generate.history if t.role == "user"] == [
        turns[2].question, turns[3].question]
    assert isinstance(events[0], ContextReady)
    assert events[0].trim_info.memory_turns == 2
    samples = trimmer.metrics.registry
    assert samples.get_sample_value("ragbus_memory_briefs_total",
                                    {"actor": "context-trimmer", "via": "fallback"}) == 2


class StandInRouter(Actor):
    """Answers every Generate with a fixed text, in three tokens, or never (``hang``)."""

    name = "router"

    def __init__(self, settings: Settings, *, answer: str, hang: bool = False) -> None:
        super().__init__(settings)
        self.answer = answer
        self.hang = hang
        self.received: list[Generate] = []
        self.cancelled = anyio.Event()

    @endpoint(lambda s: s.generate, request=Generate)
    async def generate(self, request: Generate, ctx: Context) -> None:
        self.received.append(request)
        if self.hang:
            try:
                await anyio.sleep(60)
            finally:
                self.cancelled.set()
        third = len(self.answer) // 3
        pieces = [self.answer[:third], self.answer[third:2 * third], self.answer[2 * third:]]
        for seq, piece in enumerate(pieces):
            await ctx.publish(request.reply_to, Token(request_id=request.request_id, seq=seq,
                                                      text=piece))
        await ctx.publish(request.reply_to, Done(request_id=request.request_id,
                                                 text_length=len(self.answer)))


async def test_the_brief_is_the_llm_summary_when_the_router_answers(
    nats_url: str, nc: NATS
) -> None:
    summary = "The user asked what items 0 and 1 are; both are blue widgets."
    settings = make_settings(nats_url, memory_turns=1, summarizer_timeout_s=5.0)
    turns = [turn_done("llm", i) for i in range(2)]
    router = StandInRouter(settings, answer=f"  {summary}\n")
    async with running(router, ContextTrimmer(settings)) as (_, trimmer):
        sent_at = now_ms()
        for t in turns:
            await nc.publish(S.memory_append, codec.encode(t))
            await stored(nc, "llm", seen(t))
        memory = await stored(nc, "llm", lambda m: m.folded == 1)
    assert memory.brief == summary
    assert memory.brief_source == "llm"
    assert [x.request_id for x in memory.turns] == ["req1"]
    (asked,) = router.received
    # a summary request: the conversation as context, no session (it is not a turn itself),
    # and only an LLM may answer it
    assert asked.session_id is None
    assert asked.llm_only
    assert asked.context[0].text == transcript(None, [as_stored(turns[0])])
    assert asked.max_tokens == 200
    assert asked.deadline is not None
    assert asked.deadline <= now_ms() + 5000
    assert asked.deadline >= sent_at
    assert trimmer.metrics.registry.get_sample_value(
        "ragbus_memory_briefs_total", {"actor": "context-trimmer", "via": "llm"}) == 1


async def test_a_router_that_never_answers_is_cancelled_and_the_brief_falls_back(
    nats_url: str, nc: NATS
) -> None:
    settings = make_settings(nats_url, memory_turns=1, summarizer_timeout_s=0.5)
    turns = [turn_done("slow", i) for i in range(2)]
    router = StandInRouter(settings, answer="never sent", hang=True)
    async with running(router, ContextTrimmer(settings)):
        for t in turns:
            await nc.publish(S.memory_append, codec.encode(t))
        memory = await stored(nc, "slow", lambda m: m.folded == 1)
        with anyio.fail_after(5):
            await router.cancelled.wait()  # told to stop, not left generating
    assert len(router.received) == 1
    assert memory.brief == truncate(transcript(None, [as_stored(turns[0])]), 200, keep="tail")


async def test_with_no_llm_the_brief_is_the_documented_fallback_and_says_so(
    nats_url: str, nc: NATS
) -> None:
    """The real router with only its extractive last resort: the summary request is not
    answered with sentences picked by word overlap with the instruction, the brief is the
    transcript's tail, and the query's trim_info says where the brief came from."""
    settings = msgspec.structs.replace(
        make_settings(nats_url, memory_turns=1, summarizer_timeout_s=5.0),
        router=RouterSettings(providers=[ProviderSettings(name="extractive", kind="extractive")]))
    turns = [turn_done("plain", i) for i in range(2)]
    async with running(Router(settings), ContextTrimmer(settings)) as (_, trimmer):
        for t in turns:
            await nc.publish(S.memory_append, codec.encode(t))
            await stored(nc, "plain", seen(t))
        memory = await stored(nc, "plain", lambda m: m.folded == 1)
        events = await events_of(nc, Trim(question="And then?", sources=[], session_id="plain",
                                          generate=False, reply_to=nc.new_inbox()))
    assert memory.brief == truncate(transcript(None, [as_stored(turns[0])]), 200, keep="tail")
    assert memory.brief_source == "fallback"
    assert isinstance(events[0], ContextReady)
    assert events[0].trim_info.brief_source == "fallback"
    assert trimmer.metrics.registry.get_sample_value(
        "ragbus_memory_briefs_total", {"actor": "context-trimmer", "via": "fallback"}) == 1


async def test_the_query_reports_an_llm_brief_and_no_brief_as_such(
    nats_url: str, nc: NATS
) -> None:
    settings = make_settings(nats_url, memory_turns=1, summarizer_timeout_s=5.0)
    router = StandInRouter(settings, answer="They discussed widgets 0 and 1.")
    async with running(router, ContextTrimmer(settings)):
        await nc.publish(S.memory_append, codec.encode(turn_done("told", 0)))
        await stored(nc, "told", lambda m: len(m.turns) == 1)
        before = await events_of(nc, Trim(question="So?", sources=[], session_id="told",
                                          generate=False, reply_to=nc.new_inbox()))
        await nc.publish(S.memory_append, codec.encode(turn_done("told", 1)))
        await stored(nc, "told", lambda m: m.folded == 1)
        after = await events_of(nc, Trim(question="So?", sources=[], session_id="told",
                                         generate=False, reply_to=nc.new_inbox()))
    assert isinstance(before[0], ContextReady)
    assert isinstance(after[0], ContextReady)
    assert before[0].trim_info.brief_source is None  # turns only, no brief yet
    assert after[0].trim_info.brief_source == "llm"


async def test_a_brief_stored_before_its_source_was_recorded_is_reported_as_unknown(
    nats_url: str, nc: NATS
) -> None:
    async with running(ContextTrimmer(make_settings(nats_url))):
        kv = await nc.jetstream().key_value(S.bucket("memory"))
        await kv.put(memory_key("old"), msgspec.json.encode(
            {"session_id": "old", "brief": "Written by an older version.", "turns": []}))
        events = await events_of(nc, Trim(question="So?", sources=[], session_id="old",
                                          generate=False, reply_to=nc.new_inbox()))
    assert isinstance(events[0], ContextReady)
    assert events[0].trim_info.brief_source == "unknown"
