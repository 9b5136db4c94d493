"""Control messages that every actor instance hears (no queue group)."""

from __future__ import annotations

from ._base import Message

__all__ = ("Cancel",)


class Cancel(Message, frozen=True, kw_only=True):
    """Published on ``<prefix>.cancel.<request_id>`` by whoever started the request."""

    request_id: str
    reason: str = ""
