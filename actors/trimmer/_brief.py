"""The running brief: older turns of a conversation, summarized by the LLM.

The summary is asked of the router like any answer (a ``Generate`` whose
context is the conversation), so provider choice, breakers and limits apply to
it too. It runs when a turn is stored, off the query path, with its own short
deadline. If no router is subscribed (NATS answers "no responders" at once),
the router fails, or the deadline passes, the brief is the conversation's text
cut to its most recent part: worse than a summary, but never lost and never late.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import msgspec
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.errors import TimeoutError as NatsTimeout

from ragbus.runtime import codec
from ragbus.runtime.text import count_tokens, truncate
from ragbus.subjects import (
    ERROR_HEADER,
    Cancel,
    Cancelled,
    ContextNode,
    Done,
    Failed,
    Generate,
    QueryEvent,
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
_NO_RESPONDERS = "503"


def fallback_brief(brief: str | None, turns: Sequence[StoredTurn], max_tokens: int) -> str:
    """The brief when no LLM answers: the transcript's most recent ``max_tokens``."""
    return truncate(transcript(brief, turns), max_tokens, keep="tail")


async def summarize(nc: NATS, subjects: Subjects, brief: str | None,
                    turns: Sequence[StoredTurn], *, max_tokens: int, timeout: float,
                    trace: Trace | None = None) -> str | None:
    """The LLM's summary of ``brief`` and ``turns`` within ``max_tokens``, or None when no
    router answered in ``timeout`` seconds (or it failed)."""
    request_id = new_id()
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    message = Generate(
        request_id=request_id,
        deadline=deadline_after(timeout),
        trace=trace,
        reply_to=inbox,
        question=SUMMARY_QUESTION.format(words=max(10, max_tokens * 3 // 4)),
        context=[ContextNode(chunk_id=f"conversation-{request_id}", doc_id="conversation",
                             text=transcript(brief, turns), score=1.0,
                             title="Conversation so far")],
        max_tokens=max_tokens,
    )
    finished = False
    try:
        with anyio.move_on_after(timeout):
            # a reply subject makes NATS say "no responders" at once when no router listens
            await nc.publish(subjects.generate, codec.encode(message), reply=inbox)
            text = await _collect(sub)
            finished = True
            if text is None:
                return None
            text = text.strip()
            if count_tokens(text) > max_tokens:
                text = truncate(text, max_tokens)
            return text or None
        return None
    finally:
        with anyio.CancelScope(shield=True):
            if not finished:  # the router may still be generating: tell it to stop
                await nc.publish(subjects.cancel(request_id),
                                 codec.encode(Cancel(request_id=request_id,
                                                     reason="summary deadline passed")))
            await sub.unsubscribe()


async def _collect(sub: Subscription) -> str | None:
    """Token texts in ``seq`` order until ``Done``; None on any failure."""
    parts: dict[int, str] = {}
    while True:
        try:
            msg = await sub.next_msg(timeout=None)
        except NatsTimeout:  # pragma: no cover - no timeout was given
            return None
        headers = msg.headers or {}
        if headers.get("Status") == _NO_RESPONDERS or ERROR_HEADER in headers:
            return None
        try:
            event = codec.decode(msg.data, QueryEvent)
        except msgspec.DecodeError:
            continue
        if isinstance(event, Token):
            parts[event.seq] = event.text
        elif isinstance(event, Done):
            return "".join(parts[seq] for seq in sorted(parts))
        elif isinstance(event, Failed | Cancelled):
            return None
