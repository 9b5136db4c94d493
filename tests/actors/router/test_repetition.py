"""A looping answer is cut where it loops; sampling controls against loops are sent.

The guard alone on text, then the router end to end: a real nats-server, the fake
OpenAI-compatible server on loopback streaming a loop like the one SmolLM2 produced.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ragbus.actors.router import Router
from ragbus.actors.router._repetition import RepetitionGuard
from ragbus.config import Settings
from ragbus.runtime import Metrics
from ragbus.runtime.connection import NATS
from ragbus.subjects import Done, Token
from tests.actors.router._fixtures import ask, generate, openai, with_router
from tests.support import running
from tests.support.fake_openai import Behaviour, FakeOpenAI

README = Path(__file__).resolve().parents[3] / "README.md"
INTRO = "Create one with python -m venv .venv [1]. "
LOOP = "It is not a correct answer. "


def deltas(text: str) -> tuple[str, ...]:
    """The text as a model streams it: a word (with its leading space) per delta."""
    return tuple(re.findall(r"\s*\S+", text))


def guard() -> RepetitionGuard:
    return RepetitionGuard(min_repeats=4, min_tokens=20, max_period=64)


def fed(g: RepetitionGuard, text: str, step: int = 3) -> int | None:
    """Feed ``text`` in pieces of ``step`` characters; where the loop was found."""
    for i in range(0, len(text), step):
        if g.feed(text[i:i + step]) is not None:
            return i + step
    return None


def test_a_sentence_said_four_times_in_a_row_is_a_loop_cut_after_its_first_saying() -> None:
    g = guard()
    text = INTRO + LOOP * 10
    at = fed(g, text)
    assert at is not None
    # found on the fourth saying, not later
    assert len(INTRO + LOOP * 3) < at <= len(INTRO + LOOP * 4)
    assert g.loop is not None
    assert (g.loop.period, g.loop.repeats) == (7, 4)  # "it is not a correct answer ."
    assert text[:g.loop.cut] == INTRO + LOOP.rstrip(" .")


def test_three_sayings_are_no_loop() -> None:
    assert fed(guard(), INTRO + LOOP * 3 + "So use venv.") is None


def test_one_word_over_and_over_is_a_loop_once_the_run_is_long_enough() -> None:
    assert fed(guard(), "no " * 19) is None
    g = guard()
    assert fed(g, "no " * 25) is not None
    assert g.loop is not None
    assert g.loop.period == 1


@pytest.mark.parametrize("text", [
    "The answer is no, no, no, no and no: very, very, very few people do that [2].",
    "Step 1: run it. Step 2: run it. Step 3: run it. Step 4: check it [1].",
    "| a | 1 |\n| b | 2 |\n| c | 3 |\n| d | 4 |\n| e | 5 |",
    "ha ha ha ha ha ha ha ha ha ha, said the otter.",
    "| a | b | c | d | e | f | g | h | i | j | k |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|\n| 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8 | 9 |",
    "Rules: ........................................................ and ---------- end.",
    README.read_text(),  # ten thousand tokens of prose, tables, code and lists
], ids=["no-no", "steps", "table", "ha", "separator", "dots", "readme"])
def test_legitimate_repetition_is_not_a_loop(text: str) -> None:
    assert fed(guard(), text) is None


async def test_a_looping_stream_is_cut_at_the_loop_and_the_provider_stream_closed(
    settings: Settings, nc: NATS
) -> None:
    metrics = Metrics()
    stream = deltas(INTRO + LOOP * 60)
    async with FakeOpenAI(Behaviour(tokens=stream, pace_s=0.002)) as fake:
        s = with_router(settings, [openai("small", fake.base_url)], answer_cache=False)
        async with running(Router(s, metrics=metrics)):
            events = await ask(nc, generate(nc))
            await fake.wait_for_disconnects(1, timeout=3)
    done = events[-1]
    assert isinstance(done, Done), done
    assert done.stopped == "repetition"
    text = "".join(e.text for e in events if isinstance(e, Token))
    assert text.startswith(INTRO + LOOP)
    assert text.count("It is not a correct answer") == 4  # stopped on the fourth saying
    assert done.text_length == len(text)
    # the upstream request was hung up on, long before the model's sixty sayings
    assert fake.disconnects[0].tokens_sent < len(stream) // 2
    assert metrics.registry.get_sample_value(
        "ragbus_router_stopped_total",
        {"actor": "router", "provider": "small", "reason": "repetition"}) == 1


async def test_a_normal_answer_with_a_repeated_word_is_not_cut(
    settings: Settings, nc: NATS
) -> None:
    answer = ("Yes, yes, yes: new employees get 25 days [1]. Very, very, very few carry "
              "days over, and those that do, do, do it before the end of March [1].")
    async with FakeOpenAI(Behaviour(tokens=deltas(answer))) as fake:
        s = with_router(settings, [openai("small", fake.base_url)], answer_cache=False)
        async with running(Router(s)):
            events = await ask(nc, generate(nc))
    done = events[-1]
    assert isinstance(done, Done), done
    assert done.stopped is None
    assert "".join(e.text for e in events if isinstance(e, Token)) == answer
    assert fake.disconnects == []


async def test_the_configured_sampling_controls_and_the_mode_cap_are_sent(
    settings: Settings, nc: NATS
) -> None:
    async with FakeOpenAI(Behaviour.counting(3)) as vllm, \
            FakeOpenAI(Behaviour.counting(3)) as plain:
        s = with_router(settings, [
            openai("vllm", vllm.base_url, frequency_penalty=0.4, presence_penalty=0.1,
                   repetition_penalty=1.2, max_tokens=4096),
            openai("plain", plain.base_url)],
            max_tokens_by_mode={"compact": 300, "tree_summarize": 700}, answer_cache=False)
        async with running(Router(s)):
            await ask(nc, generate(nc, max_tokens=1000))
            await ask(nc, generate(nc, max_tokens=1000, provider="plain"))
    body = vllm.chat_requests[0].body
    assert body["frequency_penalty"] == 0.4
    assert body["presence_penalty"] == 0.1
    assert body["repetition_penalty"] == 1.2
    assert body["max_tokens"] == 300  # the trimmer's 1000 within the compact cap
    sent = plain.chat_requests[0].body
    assert not {"frequency_penalty", "presence_penalty", "repetition_penalty"} & set(sent)
    assert sent["max_tokens"] == 300


def test_the_embedded_llama_cpp_server_gets_its_own_penalty_field() -> None:
    local = next(p for p in Settings().router.providers if p.kind == "local")
    assert local.repetition_penalty is not None
    assert local.penalty_field == "repeat_penalty"  # llama.cpp's name for it
    assert openai("x", "http://127.0.0.1:1/v1").penalty_field == "repetition_penalty"
