"""The answer cache: repeats are streamed from cache, marked as hits, within their scope."""

from __future__ import annotations

import numpy as np

from ragbus.actors.router import Router
from ragbus.config import Settings
from ragbus.runtime.connection import NATS
from ragbus.subjects import Done, ErrorCode, Failed, Token
from tests.actors.router._fixtures import ask, generate, openai, with_router
from tests.support import running
from tests.support.fake_openai import Behaviour, FakeOpenAI


def unit(seed: int, near: np.ndarray | None = None, noise: float = 0.0) -> bytes:
    rng = np.random.default_rng(seed)
    v = near + noise * rng.standard_normal(384) if near is not None \
        else rng.standard_normal(384)
    return (v / np.linalg.norm(v)).astype("<f4").tobytes()


def text_of(events: list[object]) -> str:
    return "".join(e.text for e in events if isinstance(e, Token))


async def test_exact_and_semantic_repeats_are_served_from_cache_within_scope(
    settings: Settings, nc: NATS
) -> None:
    base = np.random.default_rng(1).standard_normal(384)
    vec = unit(1, base)
    close = unit(2, base, noise=0.05)   # cosine ~0.998: the same question reworded
    far = unit(3)                       # unrelated
    async with FakeOpenAI(Behaviour.counting(5)) as fake:
        s = with_router(settings, [openai("llm", fake.base_url)])
        async with running(Router(s)):
            first = await ask(nc, generate(nc, cache_scope="scope-1", question_vector=vec))
            again = await ask(nc, generate(nc, cache_scope="scope-1", question_vector=vec))
            reworded = await ask(nc, generate(nc, question="New staff: how much vacation?",
                                              cache_scope="scope-1", question_vector=close))
            unrelated = await ask(nc, generate(nc, question="Who rotates laptops?",
                                               cache_scope="scope-1", question_vector=far))
            other_scope = await ask(nc, generate(nc, cache_scope="scope-2",
                                                 question_vector=vec))
            with_memory = await ask(nc, generate(nc, cache_scope="scope-1", question_vector=vec,
                                                 brief="we talked about travel"))
        calls = len(fake.requests)
    done = [e[-1] for e in (first, again, reworded, unrelated, other_scope, with_memory)]
    assert all(isinstance(d, Done) for d in done)
    hits = [d.cache_hit for d in done if isinstance(d, Done)]
    assert hits == [False, True, True, False, False, False]
    assert text_of(again) == text_of(first) == text_of(reworded)
    assert calls == 4  # the two hits never reached the provider


async def test_a_question_vector_of_another_size_is_refused_or_skipped_never_internal(
    settings: Settings, nc: NATS
) -> None:
    vec = unit(7)
    async with FakeOpenAI(Behaviour.counting(3)) as fake:
        s = with_router(settings, [openai("llm", fake.base_url)])
        async with running(Router(s)):
            first = await ask(nc, generate(nc, cache_scope="scope-v", question_vector=vec))
            ragged = await ask(nc, generate(nc, question="Ragged?", cache_scope="scope-v",
                                            question_vector=vec[:5]))
            # whole float32s of another model's size: not comparable with the entry above
            short = await ask(nc, generate(nc, question="Short?", cache_scope="scope-v",
                                           question_vector=vec[:12]))
            # and, stored beside it, it does not break the scope for the right size
            again = await ask(nc, generate(nc, question="How many days of vacation?",
                                           cache_scope="scope-v", question_vector=vec))
    assert isinstance(first[-1], Done)
    assert isinstance(ragged[-1], Failed)
    assert ragged[-1].code == ErrorCode.BAD_REQUEST
    assert "question_vector" in ragged[-1].message
    assert isinstance(short[-1], Done)
    assert not short[-1].cache_hit
    assert isinstance(again[-1], Done)
    assert again[-1].cache_hit
