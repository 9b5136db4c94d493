"""What a person thought of an answer: thumbs up or down, and a short comment."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

from ._base import Message, RequestId

__all__ = ("FEEDBACK_COMMENT_CHARS", "Feedback", "FeedbackRecorded")

#: the longest comment kept; a longer one is refused with BAD_REQUEST
FEEDBACK_COMMENT_CHARS = 2000

class Feedback(Message, frozen=True, kw_only=True):
    """Published on ``<prefix>.feedback`` by any client (the page's thumbs, an app).

    ``request_id`` names the answer rated (the query's request id, as ``done`` reports
    it). The audit-logger records it as an ``answer.feedback`` audit event linked to
    that answer; with a reply subject the sender gets :class:`FeedbackRecorded`, or
    BAD_REQUEST for a rating other than ``up``/``down``, a comment over
    ``FEEDBACK_COMMENT_CHARS`` characters or a malformed request id.
    """

    request_id: RequestId
    rating: Literal["up", "down"]
    comment: Annotated[str, Meta(max_length=FEEDBACK_COMMENT_CHARS)] | None = None
    session: Annotated[str, Meta(max_length=128)] | None = None
    deadline: int | None = None  # epoch ms; absent: the audit-logger's default timeout


class FeedbackRecorded(Message, frozen=True, kw_only=True):
    """The reply to :class:`Feedback`: its audit event id, and whether the answer it
    rates was found in the audit trail (``known``; unknown feedback is kept, marked)."""

    request_id: str
    event_id: str
    known: bool
    prompt_version: str | None = None
    provider: str | None = None
