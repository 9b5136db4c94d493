"""Settings of ``ragbus eval``: how answers are scored against a golden set."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from ._section import Positive, PositiveInt, Section

__all__ = ("DEFAULT_REFUSAL_PHRASES", "EvaluationSettings")

#: what counts as "I do not know": the default prompt asks the model to "say that you do
#: not know" when the context lacks the answer; these are the usual ways of saying so
DEFAULT_REFUSAL_PHRASES = (
    "do not know", "don't know", "does not contain", "doesn't contain", "do not contain",
    "cannot answer", "can't answer", "unable to answer", "not enough information",
    "no information about", "not mentioned in the context", "not in the context",
)


class EvaluationSettings(Section, frozen=True, kw_only=True):
    """How ``ragbus eval`` asks and scores.

    An answer sentence is *grounded* when the cosine of its embedding (citations
    removed) and that of some sentence of a passage it cites is at least
    ``grounded_threshold`` (all-MiniLM-L6-v2: a sentence quoted is ~1.0, a close
    paraphrase 0.7-0.9, a sentence on the same topic saying something else 0.4-0.6).
    An answer is a *refusal* when it is empty or contains one of
    ``refusal_phrases`` (case-insensitive). Each question is asked with ``top_k``
    sources and must end within ``timeout_s``; each embedding request within
    ``embed_timeout_s``.
    """

    grounded_threshold: Annotated[float, Meta(gt=0, le=1)] = 0.7
    refusal_phrases: list[str] = msgspec.field(
        default_factory=lambda: list(DEFAULT_REFUSAL_PHRASES))
    top_k: PositiveInt = 10
    timeout_s: Positive = 120.0
    embed_timeout_s: Positive = 60.0
