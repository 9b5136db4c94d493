"""The LLM judge: grades asked of the router's provider, read back from its reply.

A real nats-server and the real router; the judge is the fake OpenAI-compatible
server on loopback, scripted to reply with grades (or not to).
"""

from __future__ import annotations

import pytest

from ragbus.actors.router import Router
from ragbus.config import Settings
from ragbus.runtime import Client
from ragbus.runtime.connection import NATS
from ragbus.runtime.evaluation import judge_answer, parse_grade
from tests.actors.router._fixtures import CONTEXT, extractive, openai, with_router
from tests.support import running
from tests.support.fake_openai import Behaviour, FakeOpenAI

ANSWER = "New employees receive 25 days of paid vacation per year. [1]"
QUESTION = "How many vacation days do new employees get?"


@pytest.mark.parametrize(("reply", "grade"), [
    ("SCORE: 5", 1.0), ("score: 1", 0.0), ("**Score:** 4", 0.75), ("SCORE=3\n", 0.5),
    ("3", 0.5), ("I would give it a 2 out of 5.", 0.25),
    ("Great answer!", None), ("SCORE: 9", None), ("", None), ("0.5", None),
])
def test_a_grade_is_read_from_the_reply_or_left_unmeasured(reply: str,
                                                           grade: float | None) -> None:
    assert parse_grade(reply) == grade


def said(body: object) -> str:
    assert isinstance(body, dict)
    return "\n".join(m["content"] for m in body["messages"])


async def test_the_judge_provider_grades_groundedness_then_relevance(
    settings: Settings, nc: NATS
) -> None:
    async with FakeOpenAI(Behaviour(tokens=("Great",))) as fake:
        fake.script(Behaviour(tokens=("SCORE", ": 4")), Behaviour(tokens=("SCORE: 2",)),
                    Behaviour(tokens=("It is fine.",)), Behaviour.server_error())
        s = with_router(settings, [openai("judge", fake.base_url), extractive()])
        async with running(Router(s)):
            client = Client(nc)
            graded = await judge_answer(client, QUESTION, ANSWER, CONTEXT, provider="judge",
                                        timeout_s=10)
            # no grade in the reply, then the provider fails: unmeasured, not guessed
            ungraded = await judge_answer(client, QUESTION, ANSWER, CONTEXT,
                                          provider="judge", timeout_s=10)
            # the extractive provider cannot judge (llm_only): unmeasured
            extractive_judge = await judge_answer(client, QUESTION, ANSWER, CONTEXT,
                                                  provider="extractive", timeout_s=10)
        requests = fake.chat_requests
    assert graded == (0.75, 0.25)
    assert ungraded == (None, None)
    assert extractive_judge == (None, None)
    assert len(requests) == 4  # the extractive "judge" never reached an LLM
    grounded, relevance = said(requests[0].body), said(requests[1].body)
    assert "Grade how well the ANSWER below is supported" in grounded
    assert ANSWER in grounded
    assert CONTEXT[0].text in grounded  # the passages the answer was given
    assert "Grade how well the ANSWER in the context responds to the QUESTION" in relevance
    assert QUESTION in relevance
    assert ANSWER in relevance
    assert CONTEXT[0].text not in relevance
