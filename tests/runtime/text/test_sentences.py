"""Sentence boundaries, one set of rules for the chunker, the trimmer and the extractive
answerer."""

from __future__ import annotations

import pytest

from ragbus.runtime.text import sentence_spans, split_sentences


@pytest.mark.parametrize(("text", "expected"), [
    ("One. Two! Three? Four", ["One.", "Two!", "Three?", "Four"]),
    ("The default name is .venv. This name keeps it hidden.",
     ["The default name is .venv.", "This name keeps it hidden."]),
    ("Call f.readlines() to read them all. Or iterate.",
     ["Call f.readlines() to read them all.", "Or iterate."]),
    ("Pi is 3.14 roughly. Next.", ["Pi is 3.14 roughly.", "Next."]),
    ("Use e.g. the venv module. Then activate it.",
     ["Use e.g. the venv module.", "Then activate it."]),
    ("Run `python -m venv x. Y` now. Done.", ["Run `python -m venv x. Y` now.", "Done."]),
    ('He said "stop." Then left.', ['He said "stop."', "Then left."]),
    ("A paragraph\n\nanother one", ["A paragraph", "another one"]),
    ("Steps:\n- first\n- second", ["Steps:", "- first", "- second"]),
    ("これは文です。次の文。", ["これは文です。", "次の文。"]),
    ("   ", []),
])
def test_sentences_end_where_a_reader_would_end_them(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


def test_spans_point_into_the_text_and_respect_its_bounds() -> None:
    text = "Skip this. Take this one. And this. Not this."
    start, end = text.index("Take"), text.index("Not")
    spans = sentence_spans(text, start, end)
    assert [text[s:e] for s, e in spans] == ["Take this one.", "And this."]
