"""The extractive answer: real sentences of the context, cited by passage number."""

from __future__ import annotations

import re

import pytest

from ragbus.actors.router._errors import NothingToExtractError
from ragbus.actors.router._extractive import (
    ExtractiveProvider,
    coverage,
    extract,
    extract_groups,
    question_terms,
)
from ragbus.actors.router._provider import Prompt, Usage
from ragbus.config import DEFAULT_REFUSAL_PHRASES
from ragbus.runtime.evaluation import is_refusal
from ragbus.subjects import ContextNode
from tests.actors.router._fixtures import CONTEXT, extractive

CITED = re.compile(r"(.+?) \[(\d+)\](?: |$)")


def prompt(question: str, context: list[ContextNode]) -> Prompt:
    return Prompt(messages=[], question=question, context=context, max_tokens=None,
                  template="t:1")


async def answer(question: str, context: list[ContextNode], sentences: int = 3) -> str:
    provider = ExtractiveProvider(extractive(), sentences=sentences)
    usage = Usage()
    text = "".join([t async for t in provider.stream(prompt(question, context), usage,
                                                     first_token_timeout_s=1)])
    assert usage.deltas > 1  # streamed in pieces, not as one block
    return text


async def test_answer_is_cited_sentences_taken_verbatim_from_the_cited_passage() -> None:
    text = await answer("How many vacation days do new employees get?", CONTEXT)
    pairs = CITED.findall(text)
    assert pairs, text
    assert "".join(f"{s} [{n}] " for s, n in pairs).strip() == text.strip()
    for sentence, number in pairs:
        assert sentence in CONTEXT[int(number) - 1].text
    best, number = pairs[0]
    assert best == "New employees receive 25 days of paid vacation per year."
    assert number == "1"


async def test_a_question_about_another_passage_cites_that_passage() -> None:
    text = await answer("How often must passwords be rotated?", CONTEXT, sentences=1)
    assert text.strip() == "Passwords must be rotated every 90 days. [3]"


def test_rare_question_words_outweigh_common_ones() -> None:
    context = [ContextNode(chunk_id="a", doc_id="a", score=1.0,
                           text="The policy covers the office. The policy covers the office "
                                "again. Parking permits cost 40 euros a month.")]
    assert extract("What does a parking permit cost under the policy?", context, 1) == [
        ("Parking permits cost 40 euros a month.", 1)]


def test_without_any_shared_word_the_best_ranked_passage_stands_in() -> None:
    picked = extract("zebra?", CONTEXT, 2)
    assert [n for _, n in picked] == [1, 1]


async def test_no_context_means_nothing_to_extract() -> None:
    with pytest.raises(NothingToExtractError):
        await answer("anything?", [])


def test_markdown_headings_are_not_sentences_and_list_markers_are_dropped() -> None:
    context = [ContextNode(chunk_id="c1", doc_id="otters", score=1.0, text=(
        "# Sea otters and rafting\n\nSea otters hold hands while sleeping so they do not "
        "drift apart.\n- Otters wrap themselves in kelp to stay in place.\n"))]
    got = extract("Why do sea otters hold hands while rafting?", context, limit=3)
    assert got == [
        ("Sea otters hold hands while sleeping so they do not drift apart.", 1),
        ("Otters wrap themselves in kelp to stay in place.", 1),
    ]


def test_a_sentence_is_not_cut_at_a_dot_inside_a_name_or_a_call() -> None:
    """The Python tutorial's "is .venv. This name…" came out as "is ." in an answer."""
    context = [ContextNode(chunk_id="c1", doc_id="venv", score=1.0, text=(
        "A common directory location for a virtual environment is .venv. This name keeps "
        "the directory typically hidden in your shell. To read every line of a file, call "
        "f.readlines() on the file object."))]
    got = extract("Where is the virtual environment directory, and how do I read every "
                  "line of a file?", context, limit=3)
    assert ("A common directory location for a virtual environment is .venv.", 1) in got
    assert ("To read every line of a file, call f.readlines() on the file object.", 1) in got


async def test_a_map_call_cites_its_passages_by_their_numbers_in_the_whole_context() -> None:
    """tree_summarize shows one group per map call; the citations must still name the
    nodes as the client numbers them."""
    provider = ExtractiveProvider(extractive(), sentences=1)
    group = Prompt(messages=[], question="How often must passwords be rotated?",
                   context=CONTEXT, max_tokens=None, template="t:1", numbers=(7, 8, 9))
    text = "".join([t async for t in provider.stream(group, Usage(), first_token_timeout_s=1)])
    assert text.strip() == "Passwords must be rotated every 90 days. [9]"


def test_grouped_extraction_takes_each_groups_best_then_the_best_of_those() -> None:
    context = [ContextNode(chunk_id=str(i), doc_id=str(i), score=1.0, text=text) for i, text in
               enumerate(["Otters sleep holding hands.", "Otters eat urchins at sea.",
                          "Beavers build dams.", "Sleep matters to beavers too."])]
    picked = extract_groups("Why do otters sleep holding hands?", context,
                            [[0, 1], [2, 3]], 2)
    assert picked == [("Otters sleep holding hands.", 1), ("Otters eat urchins at sea.", 2)]
    # one sentence from each group competes when only one per group is taken
    assert extract_groups("Why do otters sleep holding hands?", context,
                          [[0, 1], [2, 3]], 1) == [("Otters sleep holding hands.", 1)]
    assert [n for _, n in extract_groups("Do beavers sleep?", context, [[0, 1], [2, 3]],
                                         3)] == [4, 1, 3]  # ties: earlier groups first


# -- refusals ------------------------------------------------------------------------------


async def refusing(question: str, context: list[ContextNode], *, min_coverage: float = 0.5,
                   numbers: tuple[int, ...] | None = None) -> str:
    provider = ExtractiveProvider(extractive(), sentences=2, min_coverage=min_coverage)
    p = Prompt(messages=[], question=question, context=context, max_tokens=None,
               template="t:1", numbers=numbers)
    return "".join([t async for t in provider.stream(p, Usage(), first_token_timeout_s=1)])


async def test_a_question_the_context_does_not_mention_is_answered_with_i_do_not_know() -> None:
    text = await refusing("Who won the 1966 FIFA World Cup final?", CONTEXT)
    assert text == ("I do not know: the passages found do not contain the answer (they "
                    "mention 0 of the question's 6 key terms).")
    # the form the prompt asks of an LLM, which `ragbus eval` counts as a refusal
    assert is_refusal(text, DEFAULT_REFUSAL_PHRASES)
    assert CITED.findall(text) == []  # nothing is cited: nothing supports it


async def test_a_question_the_context_mentions_is_answered_even_if_not_word_for_word() -> None:
    # 3 of 5 terms (vacation, carried, over; not "leftover", "annual"): answered
    text = await refusing("Can leftover annual vacation be carried over?", CONTEXT)
    assert not is_refusal(text, DEFAULT_REFUSAL_PHRASES)
    assert text.startswith("Unused vacation days can be carried over until the end of March. [1]")


def test_coverage_counts_the_questions_terms_found_anywhere_in_the_context() -> None:
    # "how", "do", "I" frame the question; "python" and "virtual" are in no passage
    assert question_terms("How do I create a virtual environment in Python?") == {
        "creat", "virtual", "environ", "python"}
    context = [ContextNode(chunk_id="a", doc_id="a", score=1.0, title="Environments",
                           text="Each team may create its own workspace."),
               ContextNode(chunk_id="b", doc_id="b", score=0.5, text="Nothing else here.")]
    found = coverage("How do I create a virtual environment in Python?", context)
    assert (found.found, found.terms) == (2, 4)  # "create" in a passage, "environment" in a title
    assert found.share == 0.5
    # a question of framing words alone cannot be judged: it is never refused for it
    assert coverage("What is it?", context).share == 1.0


async def test_min_coverage_zero_never_refuses_and_a_map_call_is_not_judged() -> None:
    question = "Which team won the 2010 NBA finals?"
    assert not is_refusal(await refusing(question, CONTEXT, min_coverage=0.0),
                          DEFAULT_REFUSAL_PHRASES)
    # one group of tree_summarize: another group may hold what this one lacks
    group = await refusing(question, CONTEXT, numbers=(4, 5, 6))
    assert not is_refusal(group, DEFAULT_REFUSAL_PHRASES)
    assert await refusing(question, CONTEXT) != group
