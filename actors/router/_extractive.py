"""The last resort: answer with the context's most relevant sentences, cited, no LLM.

It cannot be down, rate limited or slow, so every chain ends with it. It ranks
sentences by the question words they contain, weighted by how rare each word is
in the context (so "the" counts for nothing and a name counts for a lot), and
cites each sentence with the number of the passage it came from, as an LLM
following the prompt would. For ``tree_summarize`` it takes the best sentences of
each group of passages, then the best of those (``extract_groups``).

Like the prompt asks of an LLM, it says that it does not know when the context does
not contain the answer (``refusal``). Retrieval always returns its nearest passages,
so "nothing about it was found" shows as a context that does not even mention what
the question is about: fewer than ``router.extractive_min_coverage`` of the
question's terms appear anywhere in it (``coverage``), by the analyzer the keyword
search uses, words that only frame a question ("how", "does", "I") left out.
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

import anyio
import anyio.lowlevel

from ragbus.config import ProviderSettings
from ragbus.runtime.text import analyze, split_sentences
from ragbus.subjects import ContextNode

from ._errors import NothingToExtractError
from ._provider import Prompt, Usage

__all__ = ("REFUSAL", "Coverage", "ExtractiveProvider", "coverage", "extract",
           "extract_groups", "question_terms")

_WORD = re.compile(r"\w+", re.UNICODE)
_PIECE = re.compile(r"\S+\s*")
# markdown structure, not prose: a heading is a title, a list or quote marker is not a word
_HEADING_LINE = re.compile(r"(?m)^ {0,3}#{1,6}\s.*$")
_MARKER = re.compile(r"^(?:[-*+>]\s+)+")
_MAX_SENTENCE_CHARS = 400
_STOP = frozenset((
    "a", "an", "and", "are", "as", "at", "be", "by", "can", "did", "do", "does", "for", "from",
    "had", "has", "have", "how", "i", "in", "is", "it", "its", "of", "on", "or", "that", "the",
    "their", "there", "these", "this", "those", "to", "was", "were", "what", "when", "where",
    "which", "who", "whom", "why", "will", "with", "you", "your", "about", "into", "than",
    "then", "them", "they", "not", "no",
))

# words that frame a question rather than name what it is about: an answer need not
# repeat them, so a context is not judged by whether it does (stemmed like the terms)
_FRAMING = frozenset(analyze(
    "who whom whose what which when where why how many much do does did can could should "
    "would shall may might must will is are was were be been being am have has had i me my "
    "we us our you your it its they them tell explain describe give list please"))

#: what the provider answers when the context does not cover the question: the words
#: the default prompt asks an LLM to use ("say that you do not know"), which
#: ``ragbus eval`` counts as a refusal
REFUSAL = ("I do not know: the passages found do not contain the answer "
           "(they mention {found} of the question's {terms} key terms).")


@dataclass(frozen=True, slots=True)
class Coverage:
    """How much of the question the context mentions: ``found`` of its ``terms``."""

    found: int
    terms: int

    @property
    def share(self) -> float:
        # a question with no terms of its own cannot be judged: never refused for it
        return self.found / self.terms if self.terms else 1.0


def question_terms(question: str) -> frozenset[str]:
    """The question's terms as the keyword search analyzes them, framing words left out."""
    return frozenset(analyze(question)) - _FRAMING


def coverage(question: str, context: Sequence[ContextNode]) -> Coverage:
    """How many of the question's terms appear anywhere in the context (titles included).

    The whole context, not the best passage: an answer may join what two passages say,
    and a paraphrasing passage shares few words with the question while its neighbours
    name the rest. What no passage mentions at all, none can answer.
    """
    wanted = question_terms(question)
    seen: set[str] = set()
    for node in context:
        seen.update(analyze(f"{node.title or ''}\n{node.text}"))
    return Coverage(found=len(wanted & seen), terms=len(wanted))


@dataclass(frozen=True, slots=True)
class _Sentence:
    text: str
    passage: int  # 1-based, as cited
    position: int
    words: frozenset[str]


def _terms(text: str) -> frozenset[str]:
    return frozenset(w for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 1)


def _sentences(context: list[ContextNode]) -> list[_Sentence]:
    out: list[_Sentence] = []
    for number, node in enumerate(context, start=1):
        # a heading is a title, not a sentence: its line goes before cutting
        prose = _HEADING_LINE.sub("\n", node.text)
        for position, sentence in enumerate(split_sentences(prose)):
            text = _MARKER.sub("", " ".join(sentence.split()))
            if len(text) < 12 or len(text) > _MAX_SENTENCE_CHARS:
                continue
            out.append(_Sentence(text, number, position, _terms(text)))
    return out


def extract(question: str, context: list[ContextNode], limit: int) -> list[tuple[str, int]]:
    """Up to ``limit`` (sentence, passage number) pairs, most relevant first.

    When no sentence shares a word with the question, the opening sentences of the
    best-ranked passage stand in: retrieval chose it, so it is the best guess.
    """
    sentences = _sentences(context)
    if not sentences:
        return []
    wanted = _terms(question)
    df: dict[str, int] = {}
    for s in sentences:
        for w in s.words & wanted:
            df[w] = df.get(w, 0) + 1
    n = len(sentences)

    def score(s: _Sentence) -> float:
        return sum(math.log(1 + n / df[w]) for w in s.words & wanted)

    scored = [(score(s), s) for s in sentences]
    relevant = [(sc, s) for sc, s in scored if sc > 0]
    if relevant:
        # ties: earlier passages (better ranked) and earlier sentences first
        relevant.sort(key=lambda p: (-p[0], p[1].passage, p[1].position))
        chosen = [s for _, s in relevant[:limit]]
    else:
        first = sentences[0].passage
        chosen = [s for s in sentences if s.passage == first][:limit]
    seen: set[str] = set()
    result: list[tuple[str, int]] = []
    for s in chosen:
        if s.text not in seen:
            seen.add(s.text)
            result.append((s.text, s.passage))
    return result


def extract_groups(question: str, context: list[ContextNode],
                   groups: Sequence[Sequence[int]], limit: int) -> list[tuple[str, int]]:
    """``tree_summarize`` without an LLM: the best ``limit`` sentences of each group (of
    0-based indexes into ``context``), then the best ``limit`` of those, as (sentence,
    1-based passage number in ``context``) pairs.

    Each group is ranked on its own, as a map call would see it, so a group's best
    sentence competes in the end even where another group holds the rarer words.
    """
    candidates: list[tuple[str, int]] = []
    for group in groups:
        members = [context[i] for i in group]
        candidates += [(text, group[passage - 1] + 1)
                       for text, passage in extract(question, members, limit)]
    if not candidates:
        return []
    # the candidates as one-sentence passages: ranked again, cited back to their nodes
    as_nodes = [ContextNode(chunk_id=str(i), doc_id="", text=text, score=0.0)
                for i, (text, _) in enumerate(candidates)]
    return [(text, candidates[passage - 1][1])
            for text, passage in extract(question, as_nodes, limit)]


class ExtractiveProvider:
    """Streams the extracted sentences word by word, each followed by its citation."""

    is_llm = False

    def __init__(self, settings: ProviderSettings, *, sentences: int = 3,
                 min_coverage: float = 0.0) -> None:
        self.name = settings.name
        self.settings = settings
        self.sentences = sentences
        self.min_coverage = min_coverage

    @property
    def model(self) -> str:
        return "extractive"

    async def aclose(self) -> None:
        return None

    async def stream(self, prompt: Prompt, usage: Usage, *,
                     first_token_timeout_s: float) -> AsyncGenerator[str, None]:
        if prompt.groups is not None:
            picked = extract_groups(prompt.question, prompt.context, prompt.groups,
                                    self.sentences)
        else:
            picked = extract(prompt.question, prompt.context, self.sentences)
        if not picked:  # no sentence at all: not a refusal, this provider cannot answer
            raise NothingToExtractError(self.name, "no context to answer from")
        # a map call of tree_summarize sees one group (``numbers``): what it lacks, another
        # group may hold, so only the whole context is judged
        covered = coverage(prompt.question, prompt.context) if prompt.numbers is None else None
        if covered is not None and covered.share < self.min_coverage:
            text = REFUSAL.format(found=covered.found, terms=covered.terms)
        else:
            text = " ".join(f"{sentence} [{prompt.number(passage)}]"
                            for sentence, passage in picked)
        async for piece in self._pieces(text, usage):
            yield piece

    @staticmethod
    async def _pieces(text: str, usage: Usage) -> AsyncGenerator[str, None]:
        for i, piece in enumerate(_PIECE.findall(text)):
            usage.deltas += 1
            usage.completion_tokens += 1
            yield piece
            if i % 64 == 63:
                await anyio.lowlevel.checkpoint()  # a long answer must not hog the loop
