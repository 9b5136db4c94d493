"""Where a document may be cut: sections, blocks, sentences, lines.

Everything here returns character spans into the caller's text rather than
copies, so chunks can report exact offsets and ``text[start:end]`` is always
the chunk. Spans are trimmed of surrounding whitespace.

The rules are deliberately simple regular expressions: they must be
deterministic, fast (the chunker runs them on every document) and
predictable. A missed sentence boundary only costs a slightly worse cut point,
because the chunker falls back to lines and then tokens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ragbus.runtime.text import sentence_spans

__all__ = ("Block", "BlockKind", "Section", "lines", "sections", "sentences", "trim")

BlockKind = Literal["text", "heading", "code"]

# one or more blank lines (lines holding only spaces/tabs count as blank)
_PARAGRAPH_GAP = re.compile(r"\n[^\S\n]*\n\s*")

_LINE = re.compile(r"[^\n]*\n?")
_ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t]*$")
_CLOSING_HASHES = re.compile(r"(?:^|[ \t]+)#+$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


@dataclass(frozen=True, slots=True)
class Block:
    """A paragraph, a Markdown heading line, or a fenced code block."""

    start: int
    end: int
    kind: BlockKind = "text"


@dataclass(frozen=True, slots=True)
class Section:
    """A run of blocks under one heading trail; chunks never cross sections."""

    headings: tuple[str, ...]
    blocks: tuple[Block, ...]


def trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def sections(text: str, *, markdown: bool) -> list[Section]:
    """Plain text is one section of paragraphs; Markdown gets one section per heading.

    A heading with no body of its own ("# Title" right before "## Intro") joins
    the section that follows, so no section is a bare heading.
    """
    if not markdown:
        blocks = tuple(Block(s, e) for s, e in _gap_split(text, 0, len(text), _PARAGRAPH_GAP))
        return [Section((), blocks)] if blocks else []
    out: list[Section] = []
    trail: list[tuple[int, str]] = []
    current: list[Block] = []
    headings: tuple[str, ...] = ()
    for block, level, title in _markdown_blocks(text):
        if level:
            if any(b.kind != "heading" for b in current):
                out.append(Section(headings, tuple(current)))
                current = []
            while trail and trail[-1][0] >= level:
                trail.pop()
            trail.append((level, title))
            headings = tuple(t for _, t in trail)
        current.append(block)
    if current:
        out.append(Section(headings, tuple(current)))
    return out


def sentences(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """The sentence spans of a paragraph (``ragbus.runtime.text``'s rules, shared with the
    trimmer and the extractive answerer)."""
    return sentence_spans(text, start, end)


def lines(text: str, start: int, end: int) -> list[tuple[int, int]]:
    spans = []
    for m in _LINE.finditer(text, start, end):
        s, e = trim(text, m.start(), m.end())
        if s < e:
            spans.append((s, e))
    return spans


def _gap_split(text: str, start: int, end: int, gap: re.Pattern[str]) -> list[tuple[int, int]]:
    spans = []
    pos = start
    for m in gap.finditer(text, start, end):
        s, e = trim(text, pos, m.start())
        if s < e:
            spans.append((s, e))
        pos = m.end()
    s, e = trim(text, pos, end)
    if s < e:
        spans.append((s, e))
    return spans


def _markdown_blocks(text: str) -> list[tuple[Block, int, str]]:
    """``(block, heading level or 0, heading title)`` in order.

    ATX headings only (setext underlines are rare in the documents this
    ingests and ambiguous with horizontal rules). Blank lines inside a fenced
    code block do not split it.
    """
    out: list[tuple[Block, int, str]] = []
    para: tuple[int, int] | None = None
    fence: tuple[str, int, int] | None = None  # marker char, marker length, block start

    def close_paragraph() -> None:
        nonlocal para
        if para is not None:
            s, e = trim(text, *para)
            if s < e:
                out.append((Block(s, e), 0, ""))
            para = None

    for m in _LINE.finditer(text):
        if m.start() == m.end():
            break
        line_start, line_end = m.start(), m.end()
        line = text[line_start:line_end].rstrip("\n")
        if fence is not None:
            marker, length, block_start = fence
            stripped = line.strip()
            if stripped.startswith(marker * length) and not stripped.strip(marker):
                s, e = trim(text, block_start, line_end)
                out.append((Block(s, e, "code"), 0, ""))
                fence = None
            continue
        if not line.strip():
            close_paragraph()
            continue
        fm = _FENCE.match(line)
        if fm:
            close_paragraph()
            fence = (fm.group(1)[0], len(fm.group(1)), line_start)
            continue
        hm = _ATX_HEADING.match(line)
        if hm:
            close_paragraph()
            title = _CLOSING_HASHES.sub("", hm.group(2) or "").strip()
            s, e = trim(text, line_start, line_end)
            out.append((Block(s, e, "heading"), len(hm.group(1)), title))
            continue
        para = (para[0] if para else line_start, line_end)
    close_paragraph()
    if fence is not None:  # unterminated fence: the rest of the document is code
        s, e = trim(text, fence[2], len(text))
        if s < e:
            out.append((Block(s, e, "code"), 0, ""))
    return out
