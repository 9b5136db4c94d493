"""Feedback through NATS into the audit store, linked to the answer it rates.

A real nats-server, the real router answering from the fake OpenAI-compatible server
on loopback, the real audit-logger writing its store.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from ragbus.actors.audit import AuditLogger, read_entries
from ragbus.actors.router import Router
from ragbus.config import AuditSettings, Settings
from ragbus.runtime import BadRequestError, Metrics, codec, decode_reply
from ragbus.runtime.connection import NATS
from ragbus.subjects import (
    FEEDBACK_COMMENT_CHARS,
    AuditEvent,
    Done,
    ErrorCode,
    Feedback,
    FeedbackRecorded,
    Subjects,
    new_id,
)
from tests.actors.router._fixtures import ask, generate, openai, with_router
from tests.support import running
from tests.support.fake_openai import Behaviour, FakeOpenAI
from tests.support.waiting import wait_for

S = Subjects()


def with_store(settings: Settings, store: Path, **audit: object) -> Settings:
    return msgspec.structs.replace(settings, audit=AuditSettings(
        store_dir=str(store), **audit))  # type: ignore[arg-type]


async def rate(nc: NATS, body: bytes | Feedback) -> FeedbackRecorded:
    data = codec.encode(body) if isinstance(body, Feedback) else body
    return decode_reply(await nc.request(S.feedback, data, timeout=8), FeedbackRecorded)


def kept(store: Path, kind: str = "answer.feedback") -> list[AuditEvent]:
    return [e.event for e in read_entries(store) if e.event.kind == kind]



async def test_feedback_is_kept_linked_to_the_answers_provider_prompt_and_cache(
    settings: Settings, nc: NATS, tmp_path: Path
) -> None:
    store = tmp_path / "audit"
    metrics = Metrics()
    async with FakeOpenAI(Behaviour.counting(5)) as fake:
        s = with_store(with_router(settings, [openai("small", fake.base_url)]), store,
                       text="full")
        async with running(AuditLogger(s, metrics=metrics), Router(s)):
            events = await ask(nc, generate(nc, session_id="s-1"))
            done = events[-1]
            assert isinstance(done, Done), done
            # rated at once: the answer's own event may still be on its way to the store
            recorded = await rate(nc, Feedback(request_id=done.request_id, rating="down",
                                               comment="It cites the wrong passage.",
                                               session="s-1"))
            await wait_for(lambda: len(kept(store)) == 1)
    assert recorded.known
    assert (recorded.provider, recorded.prompt_version) == ("small", "grounded:1")
    (event,) = kept(store)
    assert event.event_id == recorded.event_id
    assert event.request_id == done.request_id
    assert (event.actor, event.session) == ("audit-logger", "s-1")
    (answer,) = kept(store, "answer.done")
    assert event.details == {
        "rating": "down", "known": True, "answer_event": answer.event_id,
        "provider": "small", "model": "small-model", "prompt_version": "grounded:1",
        "cache_hit": "miss", "comment": "It cites the wrong passage.",
        "comment_text": "full"}
    assert event.sizes == {"comment_chars": len("It cites the wrong passage.")}
    assert metrics.registry.get_sample_value(
        "ragbus_feedback_total", {"actor": "audit-logger", "rating": "down", "known": "true"}
    ) == 1


async def test_feedback_for_an_unknown_answer_is_kept_and_marked(
    settings: Settings, nc: NATS, tmp_path: Path
) -> None:
    store = tmp_path / "audit"
    s = with_store(settings, store, feedback_wait_s=0.2)
    unknown = new_id()
    async with running(AuditLogger(s)):
        recorded = await rate(nc, Feedback(request_id=unknown, rating="up"))
        await wait_for(lambda: len(kept(store)) == 1)
    assert not recorded.known
    (event,) = kept(store)
    assert event.request_id == unknown
    assert event.details == {"rating": "up", "known": False}


async def test_an_answer_written_before_the_logger_started_is_found_in_the_store(
    settings: Settings, nc: NATS, tmp_path: Path
) -> None:
    store = tmp_path / "audit"
    async with FakeOpenAI(Behaviour.counting(3)) as fake:
        s = with_store(with_router(settings, [openai("small", fake.base_url)]), store)
        async with running(AuditLogger(s), Router(s)):
            done = (await ask(nc, generate(nc)))[-1]
            assert isinstance(done, Done), done
            await wait_for(lambda: len(kept(store, "answer.done")) == 1)
    async with running(AuditLogger(s)) as (logger,):  # a new index, empty
        assert logger.answers.get(done.request_id) is None
        recorded = await rate(nc, Feedback(request_id=done.request_id, rating="up"))
    assert recorded.known
    assert recorded.provider == "small"


@pytest.mark.parametrize("body", [
    b'{"request_id": "abc", "rating": "meh"}',
    b'{"rating": "up"}',
    b'{"request_id": "a b", "rating": "up"}',
    b'{"request_id": "abc", "rating": "up", "comment": "' + b"x" * (FEEDBACK_COMMENT_CHARS + 1)
    + b'"}',
    b"not json",
], ids=["rating", "no-request-id", "request-id-with-space", "comment-too-long", "not-json"])
async def test_bad_feedback_gets_bad_request_and_the_logger_keeps_serving(
    settings: Settings, nc: NATS, tmp_path: Path, body: bytes
) -> None:
    store = tmp_path / "audit"
    s = with_store(settings, store, feedback_wait_s=0.1)
    async with running(AuditLogger(s)):
        with pytest.raises(BadRequestError) as refused:
            await rate(nc, body)
        assert refused.value.code == ErrorCode.BAD_REQUEST
        recorded = await rate(nc, Feedback(request_id="abc", rating="up"))
    assert recorded.request_id == "abc"
