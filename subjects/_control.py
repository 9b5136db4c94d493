"""Control messages: a cancel every actor instance hears (no queue group), and the
acceptance an endpoint that takes streamed work sends to the NATS reply subject."""

from __future__ import annotations

from ._base import Message

__all__ = ("Accepted", "Cancel")


class Cancel(Message, frozen=True, kw_only=True):
    """Published on ``<prefix>.cancel.<request_id>`` by whoever started the request.

    The subject names the request; ``request_id`` may be left out, and if given must be
    the same (a cancel that says two things cancels nothing)."""

    request_id: str | None = None
    reason: str = ""


class Accepted(Message, frozen=True, kw_only=True, tag="accepted", tag_field="type"):
    """The reply to a streamed request sent with a NATS reply subject (a ``Query``): an
    actor instance took it and its events will follow on ``reply_to``.

    Sent once the message decoded, its version and deadline passed and a handler slot
    took it; a message refused before that gets an error reply instead. Either way the
    reply subject gets exactly one answer, so a requester that waits for it learns at
    once that nobody took its request (NATS's no-responders status) or, when nothing
    comes within a short time, that the instance it reached is gone.
    """

    request_id: str
    actor: str
    instance: str
