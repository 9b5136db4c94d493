"""The running brief: older turns of a conversation, summarized by the LLM.

The summary is asked of the router like any answer (a ``Generate`` whose
context is the conversation), so provider choice, breakers and limits apply to
it too, except that only an LLM may answer it (``llm_only``): the router's
extractive last resort would return the transcript's sentences that share most
words with the instruction, which is no summary. It runs when a turn is stored,
off the query path, with its own short deadline. If no router is subscribed
(known at once: see ``runtime.handoff``), no LLM answers, or the deadline passes,
the brief is the conversation's text cut to its most recent part: worse than a
summary, but never lost, never late, and recorded as the fallback it is.
"""

from __future__ import annotations

from collections.abc import Sequence

from nats.aio.client import Client as NATS

from ragbus.runtime import Client
from ragbus.runtime.text import count_tokens, truncate
from ragbus.subjects import (
    ContextNode,
    Done,
    Generate,
    Subjects,
    Token,
    Trace,
    deadline_after,
    new_id,
)

from ._memory import StoredTurn, transcript

__all__ = ("SUMMARY_QUESTION", "fallback_brief", "summarize")

SUMMARY_QUESTION = (
    "Summarize the conversation given as context in at most {words} words, for whoever "
    "continues it: keep names, numbers, decisions and open questions. Plain prose, no preamble."
)


def fallback_brief(brief: str | None, turns: Sequence[StoredTurn], max_tokens: int) -> str:
    """The brief when no LLM answers: the transcript's most recent ``max_tokens``."""
    return truncate(transcript(brief, turns), max_tokens, keep="tail")


async def summarize(nc: NATS, subjects: Subjects, brief: str | None,
                    turns: Sequence[StoredTurn], *, max_tokens: int, timeout: float,
                    trace: Trace | None = None) -> str | None:
    """The LLM's summary of ``brief`` and ``turns`` within ``max_tokens``, or None when no
    router answered in ``timeout`` seconds, or no LLM provider did."""
    request_id = new_id()
    message = Generate(
        request_id=request_id,
        deadline=deadline_after(timeout),
        trace=trace,
        reply_to=nc.new_inbox(),
        question=SUMMARY_QUESTION.format(words=max(10, max_tokens * 3 // 4)),
        context=[ContextNode(chunk_id=f"conversation-{request_id}", doc_id="conversation",
                             text=transcript(brief, turns), score=1.0,
                             title="Conversation so far")],
        max_tokens=max_tokens,
        llm_only=True,
    )
    parts: dict[int, str] = {}
    async with Client(nc, subjects).open_stream(subjects.generate, message) as events:
        async for event in events:
            if isinstance(event, Token):
                parts[event.seq] = event.text
            elif isinstance(event, Done):
                text = "".join(parts[seq] for seq in sorted(parts)).strip()
                if count_tokens(text) > max_tokens:
                    text = truncate(text, max_tokens)
                return text or None
    return None  # failed, cancelled, no router, or the deadline passed
