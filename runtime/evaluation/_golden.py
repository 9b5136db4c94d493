"""Golden sets: one question a line (JSONL), with the documents that answer it.

A line is an object::

    {"id": "q1", "question": "…", "relevant": {"doc-a": 1, "doc-b": 2}}
    {"id": "q2", "question": "…", "relevant": ["doc-c"]}
    {"id": "q3", "question": "…", "answerable": false}

``relevant`` names the documents (ids as ingested) that hold the answer, with a
graded relevance (a list means grade 1 each); it may be left out, and then the
question is not scored on retrieval. ``answerable: false`` marks a question whose
answer is not in the corpus: the right answer is a refusal. ``id`` defaults to the
line number. Unknown keys are errors (a typo must not silently drop a judgement).
Blank lines are skipped.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from ..errors import BadRequestError

__all__ = ("GoldenQuestion", "GoldenSetError", "load_golden", "parse_golden")


class GoldenSetError(BadRequestError):
    """A golden set that cannot be read; the message names the file and line."""


class _Line(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    question: str
    id: str | int | None = None
    relevant: dict[str, int] | list[str] | None = None
    answerable: bool = True


class GoldenQuestion(msgspec.Struct, frozen=True, kw_only=True):
    """One question of a golden set; ``relevant`` maps document ids to grades (> 0)."""

    id: str
    question: str
    relevant: dict[str, int] = msgspec.field(default_factory=dict)
    answerable: bool = True


def parse_golden(lines: list[str], name: str = "golden set") -> list[GoldenQuestion]:
    """The questions of JSONL ``lines``; :class:`GoldenSetError` names ``name:line``."""
    decoder = msgspec.json.Decoder(_Line)
    questions: list[GoldenQuestion] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{name}:{number}"
        try:
            raw = decoder.decode(line)
        except msgspec.DecodeError as exc:
            raise GoldenSetError(f"{where}: {exc}") from None
        if not raw.question.strip():
            raise GoldenSetError(f"{where}: the question is empty")
        relevant = ({doc: 1 for doc in raw.relevant} if isinstance(raw.relevant, list)
                    else dict(raw.relevant or {}))
        if any(grade < 0 for grade in relevant.values()):
            raise GoldenSetError(f"{where}: relevance grades must be 0 or more")
        if not raw.answerable and any(grade > 0 for grade in relevant.values()):
            raise GoldenSetError(f"{where}: a question marked answerable: false names "
                                 "relevant documents")
        qid = str(raw.id) if raw.id is not None else str(number)
        if qid in seen:
            raise GoldenSetError(f"{where}: id {qid!r} is used twice")
        seen.add(qid)
        questions.append(GoldenQuestion(id=qid, question=raw.question, relevant=relevant,
                                        answerable=raw.answerable))
    if not questions:
        raise GoldenSetError(f"{name}: no questions")
    return questions


def load_golden(path: str | Path) -> list[GoldenQuestion]:
    """The golden set in file ``path`` (see the module doc)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GoldenSetError(f"{path}: cannot read it: {exc}") from None
    return parse_golden(text.splitlines(), str(path))
