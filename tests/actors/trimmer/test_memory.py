"""Conversation memory rules, without a bus: what folds, what is recalled, the fallback."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ragbus.actors.trimmer._brief import fallback_brief
from ragbus.actors.trimmer._memory import (
    SessionMemory,
    StoredTurn,
    memory_key,
    overflow,
    recall,
    transcript,
    turn_tokens,
)
from ragbus.runtime.text import count_tokens, truncate
from ragbus.subjects import ChatTurn


def turn(i: int, words: int = 5) -> StoredTurn:
    return StoredTurn(request_id=f"r{i}", question=f"question {i}?",
                      answer=" ".join(f"answer{i}" for _ in range(words)), at=i)


def test_oldest_turns_fold_beyond_the_turn_limit() -> None:
    turns = [turn(i) for i in range(5)]
    assert overflow(turns, max_turns=3, max_tokens=10_000) == 2
    assert overflow(turns, max_turns=5, max_tokens=10_000) == 0


def test_oldest_turns_fold_beyond_the_token_limit() -> None:
    turns = [turn(i, words=20) for i in range(4)]
    size = turn_tokens(turns[0])
    assert overflow(turns, max_turns=10, max_tokens=2 * size) == 2
    # one turn larger than the whole limit folds entirely
    assert overflow([turn(0, words=500)], max_turns=10, max_tokens=100) == 1


def test_recall_takes_the_brief_and_the_newest_turns_that_fit() -> None:
    turns = [turn(i) for i in range(4)]
    memory = SessionMemory(session_id="s", turns=turns, brief="they talked about cells")
    size = turn_tokens(turns[0])
    brief_size = count_tokens("they talked about cells")
    got = recall(memory, budget=brief_size + 2 * size, brief_tokens=50)
    assert got.brief == "they talked about cells"
    assert got.turns == 2
    assert got.history == [
        ChatTurn(role="user", content="question 2?"),
        ChatTurn(role="assistant", content=turns[2].answer),
        ChatTurn(role="user", content="question 3?"),
        ChatTurn(role="assistant", content=turns[3].answer),
    ]
    assert got.tokens == brief_size + 2 * size


def test_recall_never_leaves_a_hole_in_the_history() -> None:
    turns = [turn(0, words=1), turn(1, words=200), turn(2, words=1)]
    memory = SessionMemory(session_id="s", turns=turns)
    got = recall(memory, budget=turn_tokens(turns[2]) + turn_tokens(turns[0]), brief_tokens=10)
    assert got.turns == 1  # the newest only: the one before it does not fit
    assert got.history[0].content == "question 2?"


def test_recall_cuts_an_oversized_brief_to_its_most_recent_part() -> None:
    brief = " ".join(f"fact{i}" for i in range(100))
    got = recall(SessionMemory(session_id="s", brief=brief), budget=500, brief_tokens=10)
    assert got.brief == truncate(brief, 10, keep="tail")
    assert got.tokens == count_tokens(got.brief or "") <= 10


def test_nothing_is_recalled_without_memory_or_budget() -> None:
    assert recall(None, 500, 100).tokens == 0
    assert recall(SessionMemory(session_id="s", turns=[turn(0)]), 0, 100).history == []


def test_fallback_brief_is_the_tail_of_the_transcript() -> None:
    turns = [turn(1), turn(2)]
    text = transcript("earlier facts", turns)
    assert text == ("Earlier: earlier facts\nUser: question 1?\nAssistant: " + turns[0].answer
                    + "\nUser: question 2?\nAssistant: " + turns[1].answer)
    assert fallback_brief("earlier facts", turns, 8) == truncate(text, 8, keep="tail")
    assert fallback_brief(None, turns, 1000) == transcript(None, turns)


def test_memory_keys_are_kv_safe_for_any_session_id() -> None:
    for session in ("simple", "with space/and.dots", "ünïcödé", "a" * 10_000):
        key = memory_key(session)
        assert len(key) == 64
        assert key.isalnum()
    assert memory_key("a") != memory_key("b")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 120), max_size=10), st.integers(1, 8), st.integers(0, 600),
       st.integers(0, 800), st.integers(1, 200))
def test_recalled_memory_fits_its_budget_and_folds_leave_the_limits(
    sizes: list[int], max_turns: int, max_tokens: int, budget: int, brief_tokens: int
) -> None:
    turns = [turn(i, words=n) for i, n in enumerate(sizes)]
    n = overflow(turns, max_turns, max_tokens)
    kept = turns[n:]
    assert len(kept) <= max_turns
    assert sum(turn_tokens(t) for t in kept) <= max_tokens
    # folding one turn fewer would break a limit: no turn folds without need
    if n:
        fewer = turns[n - 1:]
        assert len(fewer) > max_turns or sum(turn_tokens(t) for t in fewer) > max_tokens
    got = recall(SessionMemory(session_id="s", turns=kept, brief="b " * 50), budget, brief_tokens)
    history_tokens = sum(count_tokens(t.content) for t in got.history)
    brief = count_tokens(got.brief) if got.brief else 0
    assert got.tokens == history_tokens + brief <= budget
