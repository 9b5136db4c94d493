"""The scores on a tiny hand-checked set: every expected number worked out by hand."""

from __future__ import annotations

import math

import pytest

from ragbus.config import DEFAULT_REFUSAL_PHRASES, EvaluationSettings
from ragbus.runtime.evaluation import (
    AnswerSentence,
    QuestionResult,
    answer_sentences,
    below,
    citation_valid,
    cited_share,
    compare,
    documents,
    grounded_share,
    is_refusal,
    ndcg_at_10,
    precision_at,
    recall_at,
    reciprocal_rank,
    strip_citations,
    summarize,
)

# sources as a client gets them: chunks of "b" twice, so "b" counts once, at place 2
SOURCES = ["a", "b", "b", "c", "d", "e", "f", "g", "h", "i", "j", "z"]
RELEVANT = {"b": 1, "e": 2, "z": 1}  # "z" comes back 11th: outside the top 10


def test_documents_keep_the_first_place_of_each() -> None:
    assert documents(SOURCES) == ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "z"]


def test_retrieval_scores() -> None:
    ranked = documents(SOURCES)
    assert precision_at(ranked, RELEVANT, 5) == 2 / 5      # b and e among a b c d e
    assert recall_at(ranked, RELEVANT, 10) == 2 / 3        # z is 11th
    assert reciprocal_rank(ranked, RELEVANT, 10) == 1 / 2  # b is second
    # DCG: b (1) at place 2, e (2) at place 5; ideal order e, b, z
    dcg = 1 / math.log2(3) + 2 / math.log2(6)
    idcg = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_10(ranked, RELEVANT) == pytest.approx(dcg / idcg)
    assert ndcg_at_10(ranked, RELEVANT) == pytest.approx(0.44864, abs=1e-5)


def test_retrieval_scores_of_a_short_or_empty_list() -> None:
    assert precision_at(["b"], RELEVANT, 5) == 1 / 5  # missing places are misses
    assert recall_at([], RELEVANT, 10) == 0.0
    assert reciprocal_rank(["a", "c"], RELEVANT, 10) == 0.0
    assert recall_at(["b"], {"b": 0}, 10) is None  # nothing relevant: not measurable


def test_sentences_and_their_citations_llm_layout() -> None:
    got = answer_sentences("Aspirin lowers fever [1]. It was tested in 1990 [2][5]. "
                           "Nobody knows why.")
    assert got == [AnswerSentence("Aspirin lowers fever.", (1,)),
                   AnswerSentence("It was tested in 1990.", (2, 5)),
                   AnswerSentence("Nobody knows why.", ())]
    assert citation_valid(got, 5) is True
    assert citation_valid(got, 3) is False  # [5] names no passage of three
    assert cited_share(got) == 2 / 3


def test_markers_opening_a_sentence_belong_to_the_one_before() -> None:
    # the extractive provider writes "sentence [n] sentence [n]"
    got = answer_sentences("Aspirin lowers fever. [1] It was tested in 1990. [2]")
    assert got == [AnswerSentence("Aspirin lowers fever.", (1,)),
                   AnswerSentence("It was tested in 1990.", (2,))]
    assert cited_share(got) == 1.0


def test_citation_zero_is_invalid_and_no_sentences_is_unmeasured() -> None:
    assert citation_valid(answer_sentences("See [0]."), 3) is False
    assert cited_share([]) is None


def test_strip_citations() -> None:
    assert strip_citations("It was tested [2][5] in  1990 [1].") == "It was tested in 1990."


def test_grounded_share() -> None:
    # supported at or above the threshold; a sentence citing nothing valid is unsupported
    assert grounded_share([0.9, None, 0.69, 0.7], 0.7) == 2 / 4
    assert grounded_share([], 0.7) is None


@pytest.mark.parametrize(("answer", "refused"), [
    ("I don\u2019t know: the context does not say.", True),
    ("The context DOES NOT CONTAIN the answer [1].", True),
    ("", True),
    (" [1] ", True),  # nothing but a marker
    ("Aspirin lowers fever [1].", False),
])
def test_refusals(answer: str, refused: bool) -> None:
    assert is_refusal(answer, DEFAULT_REFUSAL_PHRASES) is refused


def _result(qid: str, **kw: object) -> QuestionResult:
    return QuestionResult(id=qid, question=qid, answerable=kw.pop("answerable", True),
                          **kw)  # type: ignore[arg-type]


RESULTS = [
    _result("q1", precision_at_5=0.4, recall_at_10=1.0, mrr=0.5, ndcg_at_10=0.6,
            citation_valid=True, cited_sentences=1.0, grounded=1.0, answer_relevance=0.8,
            refused=False, provider="extractive"),
    _result("q2", precision_at_5=0.0, recall_at_10=0.0, mrr=0.0, ndcg_at_10=0.0,
            citation_valid=False, cited_sentences=0.5, grounded=0.5, answer_relevance=0.4,
            refused=False, provider="extractive"),
    _result("q3", precision_at_5=0.2, recall_at_10=0.5, mrr=1.0, ndcg_at_10=0.3,
            refused=True, provider="extractive"),   # answerable, refused: no answer scores
    _result("q4", answerable=False, refused=True, refusal_correct=True, provider="local"),
    _result("q5", answerable=False, refused=False, refusal_correct=False,
            provider="extractive"),
    _result("q6", answerable=False, error="DEADLINE_EXCEEDED: no answer before the deadline"),
]


def test_summary_means_over_the_questions_each_metric_applies_to() -> None:
    s = summarize(RESULTS, EvaluationSettings(grounded_threshold=0.65))
    assert (s.questions, s.answerable, s.unanswerable, s.failed) == (6, 3, 3, 1)
    assert s.precision_at_5 == pytest.approx((0.4 + 0.0 + 0.2) / 3)
    assert s.recall_at_10 == pytest.approx(1.5 / 3)
    assert s.mrr == pytest.approx(1.5 / 3)
    assert s.ndcg_at_10 == pytest.approx(0.9 / 3)
    assert s.citation_valid == 0.5                 # q1 valid, q2 not
    assert s.cited_sentences == 0.75
    assert s.grounded == 0.75
    assert s.answer_relevance == pytest.approx(0.6)
    assert s.refusal_correct == 0.5                # q4 refused, q5 answered; q6 failed
    assert s.false_refusals == pytest.approx(1 / 3)  # q3 of the three answerable
    assert s.providers == {"extractive": 4, "local": 1}
    assert s.grounded_threshold == 0.65


def test_looped_is_the_share_of_answered_questions_cut_at_a_repetition() -> None:
    results = [*RESULTS[:2], _result("q7", stopped="repetition", provider="local")]
    assert summarize(results, EvaluationSettings()).looped == pytest.approx(1 / 3)
    # a failed question did not answer: it is not counted either way
    assert summarize(RESULTS, EvaluationSettings()).looped == 0.0


def test_below_names_each_missed_minimum() -> None:
    s = summarize(RESULTS, EvaluationSettings())
    assert below(s, {"grounded": 0.75, "mrr": 0.5}) == []  # equal is enough
    assert below(s, {"grounded": 0.8, "precision_at_5": 0.1}) == ["grounded 0.7500 < 0.8"]
    unmeasured = summarize(RESULTS[3:], EvaluationSettings())
    assert below(unmeasured, {"mrr": 0.1}) == ["mrr was not measured (minimum 0.1)"]


def test_compare_is_b_minus_a() -> None:
    a = summarize(RESULTS, EvaluationSettings())
    b = summarize(RESULTS[:2], EvaluationSettings())
    rows = compare(a, b)
    assert rows["precision_at_5"] == (pytest.approx(0.2), 0.2, pytest.approx(0.0))
    assert rows["grounded"] == (0.75, 0.75, 0.0)
    assert rows["refusal_correct"] == (0.5, None, None)  # B asked no unanswerable question
