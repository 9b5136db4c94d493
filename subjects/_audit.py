"""Audit events and the stream that keeps them.

An event says who did what to which thing, with what outcome, and how big and
how long it was; it never carries a credential, and question or answer text only
as the configuration allows (full, hashed or omitted), masked of personal data.
The event id doubles as the JetStream ``Nats-Msg-Id``, so a publisher retrying
after a lost acknowledgement never stores an event twice.
"""

from __future__ import annotations

import enum
from typing import Any, Literal

import msgspec
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from ._base import Message, new_id, now_ms
from ._names import Subjects

__all__ = ("MSG_ID_HEADER", "AuditEvent", "AuditKind", "AuditOutcome", "audit_stream")

#: JetStream drops a second message with the same id inside the duplicate window.
MSG_ID_HEADER = "Nats-Msg-Id"


class AuditKind(enum.StrEnum):
    """The kinds every deployment records; ``<prefix>.audit.<kind>`` is their subject.

    Other dotted kinds are allowed (a third party may add its own); these are the
    ones ragbus itself publishes.
    """

    QUERY_RECEIVED = "query.received"
    ANSWER_DONE = "answer.done"
    ANSWER_FAILED = "answer.failed"
    # a person's rating of an answer (rag.feedback), linked to the answer's request id
    ANSWER_FEEDBACK = "answer.feedback"
    REQUEST_CANCELLED = "request.cancelled"
    INGEST_JOB = "ingest.job"
    DOC_CHANGED = "doc.changed"
    DOC_DELETED = "doc.deleted"
    DOC_PURGED = "doc.purged"
    # a conversation's memory deleted (``ragbus session delete``, the page's new conversation)
    SESSION_DELETED = "session.deleted"
    PROVIDER_BREAKER = "provider.breaker"
    AUTH_DENIED = "auth.denied"
    RATE_LIMITED = "rate.limited"
    CONFIG_LOADED = "config.loaded"
    # the audit-logger's note of a message it did not keep: undecodable, or an event its
    # subject does not vouch for (another role's actor, another kind)
    AUDIT_REJECTED = "audit.rejected"


class AuditOutcome(enum.StrEnum):
    OK = "ok"
    FAILED = "failed"
    DENIED = "denied"
    CANCELLED = "cancelled"


class AuditEvent(Message, frozen=True, kw_only=True):
    """One audited action. ``time`` is epoch milliseconds when it happened.

    ``subject`` names what the action was about (a document id, a job id, a
    provider); ``sizes`` are counts (characters, tokens, chunks, bytes) and
    ``duration_ms`` how long it took. ``text_mode`` records how ``question`` and
    ``answer`` were kept, so a reader knows whether they are text or hashes.
    """

    event_id: str = msgspec.field(default_factory=new_id)
    time: int = msgspec.field(default_factory=now_ms)
    kind: str
    actor: str
    instance: str | None = None
    request_id: str | None = None
    trace_id: str | None = None
    session: str | None = None
    subject: str | None = None
    outcome: AuditOutcome = AuditOutcome.OK
    code: str | None = None
    duration_ms: float | None = None
    sizes: dict[str, int] = msgspec.field(default_factory=dict)
    text_mode: Literal["full", "hashed", "omitted"] | None = None
    question: str | None = None
    answer: str | None = None
    details: dict[str, Any] = msgspec.field(default_factory=dict)


def audit_stream(s: Subjects, *, max_age_s: float, max_bytes: int,
                 duplicate_window_s: float) -> StreamConfig:
    """Everything under ``<prefix>.audit.>``, on disk, deduplicated by event id.

    Limits retention (not a work queue) so any number of consumers, the
    audit-logger and third parties alike, each read every event. Deleting or
    purging messages is refused, so the stream cannot be quietly edited; when a
    limit is reached the oldest events go first.
    """
    return StreamConfig(
        name=s.audit_stream,
        subjects=[s.audit_all],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=max_age_s,
        max_bytes=max_bytes,
        duplicate_window=duplicate_window_s,
        deny_delete=True,
        deny_purge=True,
        description="ragbus audit trail",
    )
