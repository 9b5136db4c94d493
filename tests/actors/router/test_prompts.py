"""Prompt templates: stable A/B split by session, and what the model is sent."""

from __future__ import annotations

from collections import Counter

from ragbus.actors.router._prompts import Prompts
from ragbus.config import PromptTemplate
from ragbus.subjects import ChatTurn, ContextNode, Generate
from tests.actors.router._fixtures import CONTEXT

A = PromptTemplate(name="grounded", version="1", weight=3.0)
B = PromptTemplate(name="terse", version="2", system="Answer in one sentence. {brief}",
                   user="{context}\n\nQ: {question}", weight=1.0)


def request(**kw: object) -> Generate:
    fields: dict[str, object] = {"question": "How many vacation days?", "context": CONTEXT,
                                 "reply_to": "inbox.x"}
    fields.update(kw)
    return Generate(**fields)  # type: ignore[arg-type]


def test_a_session_keeps_its_template_and_sessions_split_by_weight() -> None:
    prompts = Prompts([A, B])
    picks = Counter(prompts.choose(f"session-{i}").name for i in range(4000))
    assert 0.70 < picks["grounded"] / 4000 < 0.80  # weight 3 of 4
    for i in range(50):
        key = f"session-{i}"
        assert prompts.render(request(session_id=key)).template == \
            prompts.render(request(session_id=key)).template


def test_zero_weight_templates_are_never_chosen() -> None:
    off = PromptTemplate(name="off", version="1", weight=0.0)
    prompts = Prompts([off, B])
    assert {prompts.choose(str(i)).name for i in range(200)} == {"terse"}


def test_messages_carry_numbered_context_history_and_question() -> None:
    history = [ChatTurn(role="user", content="Hi"), ChatTurn(role="assistant", content="Hello")]
    prompt = Prompts([A]).render(request(history=history, brief="They asked about leave."))
    roles = [m["role"] for m in prompt.messages]
    assert roles == ["system", "user", "assistant", "user"]
    assert "They asked about leave." in prompt.messages[0]["content"]
    user = prompt.messages[-1]["content"]
    assert user.startswith("Context:\n[1] Employee handbook\nNew employees receive 25 days")
    assert "[2] Travel policy" in user
    assert user.endswith("Question: How many vacation days?")
    assert prompt.template == "grounded:1"


def test_placeholders_in_the_context_are_left_alone() -> None:
    tricky = [ContextNode(chunk_id="x", doc_id="x", score=1.0, text="Write {question} here.")]
    prompt = Prompts([B]).render(request(context=tricky, question="Q?", brief="B"))
    assert prompt.messages[-1]["content"] == "[1]\nWrite {question} here.\n\nQ: Q?"
    assert prompt.messages[0]["content"] == "Answer in one sentence. B"


def test_token_count_uses_the_trimmers_count_plus_the_template() -> None:
    prompts = Prompts([A])
    counted = prompts.token_count(request(), prompts.render(request()))
    assert 80 < counted < 200
    given = prompts.token_count(request(prompt_tokens=5000), prompts.render(request()))
    assert 5000 < given < 5100
