"""Sentences, cut the same way wherever ragbus needs them: the chunker's cut points, the
trimmer's compression, the extractive answerer's picks.

A sentence ends at terminal punctuation (plus closing quotes or brackets) followed by
whitespace and a character that is not a lowercase letter, so "e.g. the", ".venv",
"f.readlines()" and "3.14" stay whole; at a CJK full stop; at a blank line; and before
a list item on its own line, so lists without punctuation still have cut points.
Nothing inside inline code (backticks) is a boundary.
"""

from __future__ import annotations

import re

__all__ = ("sentence_spans", "split_sentences")

_BOUNDARY = re.compile(
    r"[.!?\u2026]+[\"'\u201d\u2019)\]`]*(?P<latin>\s+)(?=[^\sa-z])"
    r"|[\u3002\uff01\uff1f]+(?P<cjk>\s*)(?=\S)"
    r"|(?P<gap>\n[^\S\n]*\n\s*)"
    r"|(?P<item>\n)(?=[^\S\n]*(?:[-*+\u2022]|\d{1,3}[.)])[^\S\n])"
)
_INLINE_CODE = re.compile(r"`[^`\n]+`")


def sentence_spans(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """``(start, end)`` of each sentence of ``text[start:end]``, whitespace trimmed, none
    empty, in order."""
    end = len(text) if end is None else end
    code = [m.span() for m in _INLINE_CODE.finditer(text, start, end)]
    spans: list[tuple[int, int]] = []
    pos = start
    for m in _BOUNDARY.finditer(text, start, end):
        group = m.lastgroup
        assert group is not None
        cut = m.start(group)
        if any(a < cut < b for a, b in code):
            continue
        _add(text, pos, cut, spans)
        pos = max(pos, m.end(group))
    _add(text, pos, end, spans)
    return spans


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text``, stripped; none is empty."""
    return [text[s:e] for s, e in sentence_spans(text)]


def _add(text: str, start: int, end: int, spans: list[tuple[int, int]]) -> None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if start < end:
        spans.append((start, end))
