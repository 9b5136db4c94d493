"""An LLM as judge: groundedness and relevance graded by a provider of the router.

Hand-written prompts, not an evaluation library (ragas and deepeval were checked and
left out: see README "Evaluating answers"). Each grade is asked of the router like
any answer (a ``Generate`` on ``<prefix>.generate``) with the judge's provider
pinned and ``llm_only`` set, so it goes wherever the router's providers go (an
OpenAI-compatible server, the local SmolLM2), under their breakers, limits and
timeouts, and never to the extractive provider, whose "grade" would be quoted
sentences. The router wraps the grading instruction in its own prompt template
(the instruction is the "question", the material the "context"), so the
instruction says plainly that it is a grading task and how to reply.

A grade is a whole number from 1 to 5, read from ``SCORE: n`` (or the reply's
first digit 1-5); it is reported as ``(n - 1) / 4``, from 0 to 1. A reply with no
grade, a failure or a timeout leaves the score unmeasured (None), never a guess.
"""

from __future__ import annotations

import re

from ragbus.subjects import ContextNode, Done, Failed, Generate, Token, deadline_after

from ..client import Client

__all__ = ("GROUNDED_INSTRUCTION", "RELEVANCE_INSTRUCTION", "judge_answer", "parse_grade")

GROUNDED_INSTRUCTION = (
    "This is a grading task, not a question to answer. Grade how well the ANSWER below is "
    "supported by the numbered context passages: 5 if every statement in it is stated "
    "in the passages, 3 if some statements are supported and some are not, 1 if none "
    "is. Reply with one line 'SCORE: n' (n from 1 to 5) and nothing else.\n\n"
    "ANSWER: {answer}"
)
RELEVANCE_INSTRUCTION = (
    "This is a grading task, not a question to answer. Grade how well the ANSWER in the "
    "context responds to the QUESTION in the context: 5 if it answers it directly and "
    "completely, 3 if it is on the topic but answers it only in part, 1 if it does not "
    "address it. Reply with one line 'SCORE: n' (n from 1 to 5) and nothing else."
)
_SCORE = re.compile(r"score\s*[:=]?\s*\**\s*([1-5])\b", re.IGNORECASE)
_DIGIT = re.compile(r"(?<![\d.])([1-5])(?![\d.])")
_REPLY_TOKENS = 16


def parse_grade(reply: str) -> float | None:
    """The grade in a judge's reply, from 0 to 1; None if it holds none."""
    found = _SCORE.search(reply) or _DIGIT.search(reply)
    return None if found is None else (int(found.group(1)) - 1) / 4


async def _ask(client: Client, instruction: str, context: list[ContextNode], provider: str,
               timeout_s: float) -> float | None:
    request = Generate(question=instruction, context=context, provider=provider,
                       llm_only=True, max_tokens=_REPLY_TOKENS,
                       reply_to=client.nc.new_inbox(), deadline=deadline_after(timeout_s))
    parts: dict[int, str] = {}
    async with client.open_stream(client.subjects.generate, request,
                                  hint="start the router") as events:
        async for event in events:
            if isinstance(event, Token):
                parts[event.seq] = event.text
            elif isinstance(event, Done):
                return parse_grade("".join(parts[seq] for seq in sorted(parts)))
            elif isinstance(event, Failed):
                return None
    return None


async def judge_answer(client: Client, question: str, answer: str,
                       context: list[ContextNode], *, provider: str,
                       timeout_s: float) -> tuple[float | None, float | None]:
    """``(grounded, relevance)`` of ``answer`` as graded by ``provider``: grounded in the
    passages the answer was given, relevant to the question."""
    grounded = await _ask(client, GROUNDED_INSTRUCTION.format(answer=answer), context,
                          provider, timeout_s)
    pair = [ContextNode(chunk_id="question", doc_id="question", text=question, score=1.0,
                        title="QUESTION"),
            ContextNode(chunk_id="answer", doc_id="answer", text=answer, score=1.0,
                        title="ANSWER")]
    relevance = await _ask(client, RELEVANCE_INSTRUCTION, pair, provider, timeout_s)
    return grounded, relevance
