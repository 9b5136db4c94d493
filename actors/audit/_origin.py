"""Whether an event's subject vouches for it: the publisher's role, and the kind.

Anyone on the bus used to be able to publish any audit subject with any ``actor``
in the event, so the bridge could file a ``doc.deleted`` in the ingestor's name.
Now the subject carries the publisher's bus role (``<prefix>.audit.<role>.<kind>``)
and nats-server lets each role publish under its own name only, so the subject is
the bus's word on who published. An event whose ``actor`` belongs to another role,
or whose ``kind`` is not the subject's, is not kept as sent.
"""

from __future__ import annotations

from ragbus.runtime.security import audit_role_of
from ragbus.subjects import AuditEvent, Subjects

from ._store import Check, Incoming

__all__ = ("origin_check",)


def origin_check(subjects: Subjects) -> Check:
    """The audit store's check for events under ``subjects``' prefix."""
    legacy = subjects.audit_all[:-1]  # "<prefix>.audit.", followed by the kind alone

    def check(item: Incoming, event: AuditEvent) -> str | None:
        if item.subject == legacy + event.kind:
            return (f"published on {item.subject}, which names no role (the form before "
                    f"roles were put in audit subjects): who published it cannot be told")
        parsed = subjects.parse_audit(item.subject)
        if parsed is None:
            return f"{item.subject} is not an audit subject (<prefix>.audit.<role>.<kind>)"
        role, kind = parsed
        claimed = audit_role_of(event.actor)
        if claimed != role:
            return (f"the event names actor {event.actor!r} (role {claimed!r}) but came on "
                    f"{item.subject}, where only role {role!r} may publish")
        if kind != event.kind:
            return f"the event's kind {event.kind!r} is not its subject's ({kind!r})"
        return None

    return check
