"""Reading golden sets and results files: bad lines are named, good ones read exactly."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from ragbus.config import EvaluationSettings
from ragbus.runtime.evaluation import (
    GoldenQuestion,
    GoldenSetError,
    QuestionResult,
    load_golden,
    parse_golden,
    read_results,
    summarize,
)


def test_reads_graded_listed_and_unanswerable_questions(tmp_path: Path) -> None:
    path = tmp_path / "g.jsonl"
    path.write_text('{"id": "q1", "question": "Does A cause B?", "relevant": {"d1": 2}}\n'
                    "\n"
                    '{"id": 7, "question": "What is C?", "relevant": ["d2", "d3"]}\n'
                    '{"question": "Who won in 1930?", "answerable": false}\n')
    assert load_golden(path) == [
        GoldenQuestion(id="q1", question="Does A cause B?", relevant={"d1": 2}),
        GoldenQuestion(id="7", question="What is C?", relevant={"d2": 1, "d3": 1}),
        GoldenQuestion(id="4", question="Who won in 1930?", answerable=False),
    ]


@pytest.mark.parametrize(("lines", "message"), [
    (['{"question": "ok"}', '{"question": "broken"'], "g.jsonl:2: "),
    (['{"question": "ok", "relevent": ["d1"]}'], "g.jsonl:1: Object contains unknown field"),
    (['{"id": "a", "question": "x"}', '{"id": "a", "question": "y"}'],
     "g.jsonl:2: id 'a' is used twice"),
    (['{"question": "  "}'], "g.jsonl:1: the question is empty"),
    (['{"question": "x", "answerable": false, "relevant": ["d1"]}'],
     "g.jsonl:1: a question marked answerable: false names relevant documents"),
    (['{"question": "x", "relevant": {"d1": -1}}'], "g.jsonl:1: relevance grades"),
    (["", "  "], "g.jsonl: no questions"),
])
def test_a_bad_line_is_named(lines: list[str], message: str) -> None:
    with pytest.raises(GoldenSetError) as caught:
        parse_golden(lines, "g.jsonl")
    assert caught.value.message.startswith(message)


def test_an_unreadable_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(GoldenSetError, match="cannot read it"):
        load_golden(tmp_path / "missing.jsonl")


def test_results_file_round_trip(tmp_path: Path) -> None:
    results = [QuestionResult(id="q1", question="?", answerable=True, mrr=0.5, grounded=1.0)]
    summary = summarize(results, EvaluationSettings())
    path = tmp_path / "run.jsonl"
    path.write_bytes(b"\n".join(msgspec.json.encode(r) for r in (*results, summary)))
    assert read_results(path) == (results, summary)


def test_results_file_without_summary_or_with_a_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    path.write_text('{"type": "question", "id": "q1", "question": "?", "answerable": true}\n')
    with pytest.raises(GoldenSetError, match="no summary line"):
        read_results(path)
    path.write_text('{"type": "question"}\n')
    with pytest.raises(GoldenSetError, match=r"run.jsonl:1: not a result line"):
        read_results(path)
