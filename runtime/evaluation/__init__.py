"""Scoring answers against a golden set: the machinery of ``ragbus eval`` and
``bench.answers``.

``load_golden`` reads a set (JSONL, see ``_golden``), ``evaluate`` asks its
questions through the running system and scores each answer, ``summarize`` gives
the means; the scores themselves are pure functions (``_scores``), tested on
hand-checked numbers.
"""

from ._golden import GoldenQuestion, GoldenSetError, load_golden, parse_golden
from ._judge import GROUNDED_INSTRUCTION, RELEVANCE_INSTRUCTION, judge_answer, parse_grade
from ._run import (
    METRICS,
    QuestionResult,
    Summary,
    ask_one,
    below,
    compare,
    evaluate,
    read_results,
    summarize,
)
from ._scores import (
    AnswerSentence,
    answer_sentences,
    citation_valid,
    cited_share,
    documents,
    grounded_share,
    is_refusal,
    mean,
    ndcg_at_10,
    precision_at,
    recall_at,
    reciprocal_rank,
    strip_citations,
)

__all__ = (
    "GROUNDED_INSTRUCTION",
    "METRICS",
    "RELEVANCE_INSTRUCTION",
    "AnswerSentence",
    "GoldenQuestion",
    "GoldenSetError",
    "QuestionResult",
    "Summary",
    "answer_sentences",
    "ask_one",
    "below",
    "citation_valid",
    "cited_share",
    "compare",
    "documents",
    "evaluate",
    "grounded_share",
    "is_refusal",
    "judge_answer",
    "load_golden",
    "mean",
    "ndcg_at_10",
    "parse_golden",
    "parse_grade",
    "precision_at",
    "read_results",
    "recall_at",
    "reciprocal_rank",
    "strip_citations",
    "summarize",
)
