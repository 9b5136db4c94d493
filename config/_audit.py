"""Settings of the audit trail and of the least-privilege bus.

Both live here because they are one promise: who may do what on the bus, and a
durable record of what was done.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Annotated, Literal

from msgspec import Meta

from ._secret import Secret
from ._section import NonNegative, Positive, PositiveInt, Section

__all__ = ("AUDIT_PUBLISHERS", "ROLES", "AuditSettings", "SecuritySettings", "TextMode")

TextMode = Literal["full", "hashed", "omitted"]

_DAY = 24 * 3600.0

#: Every role a connection can take on the bus (see runtime/security.py for what each may do).
ROLES = ("admin", "audit", "auditor", "bridge", "client", "embedder", "ingestor", "retriever",
         "router", "trimmer")
#: The roles that publish audit events (every actor's; not the CLI, clients or readers):
#: a process logging in as one of them needs ``audit.hash_key`` in production.
AUDIT_PUBLISHERS = ("audit", "bridge", "embedder", "ingestor", "retriever", "router",
                    "trimmer")


class AuditSettings(Section, frozen=True, kw_only=True):
    """The audit stream, the publisher every actor uses, and the audit-logger's store.

    ``text`` decides how question and answer text is kept: ``hashed`` (the
    default) lets two events be matched without keeping what was asked. With
    ``hash_key`` (a secret, required in production) the hash is an HMAC-SHA256
    (``hmac-sha256:…``), so short texts cannot be guessed back by hashing
    candidates; without it (development) it is plain SHA-256 (``sha256:…``) and
    the publisher warns once. Every process that publishes must share the key,
    or the same question hashes differently in two events.
    ``publish_retry_s`` must stay below ``duplicate_window_s``: a retry inside the
    window is dropped by the server, one after it would be a second copy.
    """

    enabled: bool = True
    text: TextMode = "hashed"
    hash_key: Secret | None = None
    # the JetStream stream
    max_age_s: Positive = 365 * _DAY
    max_bytes: PositiveInt = 10 * 1024**3
    duplicate_window_s: Positive = 300.0
    # the publisher (inside every actor)
    queue_size: PositiveInt = 10_000
    enqueue_timeout_ms: NonNegative = 50.0
    publish_in_flight: PositiveInt = 64
    publish_timeout_s: Positive = 2.0
    publish_retry_s: Positive = 120.0
    flush_timeout_s: NonNegative = 5.0
    # the audit-logger
    store_dir: str | None = None  # default: <data_dir>/audit
    durable: str = "audit-logger"
    batch_size: PositiveInt = 500
    fetch_wait_s: Positive = 0.5
    ack_wait_s: Positive = 30.0
    max_ack_pending: PositiveInt = 20_000
    fsync: bool = True
    # event ids remembered (and re-read on start) to drop redeliveries: well above
    # max_ack_pending; a larger value makes starting slower (~15 us per record)
    dedupe_ids: PositiveInt = 200_000
    # feedback (rag.feedback, kept as answer.feedback): the newest answers indexed by
    # request id, how far back the store is searched for older ones, and how long a
    # rating waits for its answer's event when it overtook it on the bus
    feedback_index: PositiveInt = 100_000
    feedback_lookback_s: Positive = 30 * _DAY
    feedback_wait_s: NonNegative = 2.0

    def __post_init__(self) -> None:
        if self.publish_retry_s >= self.duplicate_window_s:
            raise ValueError(
                f"audit.publish_retry_s ({self.publish_retry_s}) must be below "
                f"audit.duplicate_window_s ({self.duplicate_window_s}), or a late retry "
                "would be stored twice: lower the first or raise the second"
            )
        if self.max_ack_pending < self.batch_size:
            raise ValueError(
                f"audit.max_ack_pending ({self.max_ack_pending}) must be at least "
                f"audit.batch_size ({self.batch_size})"
            )


class SecuritySettings(Section, frozen=True, kw_only=True):
    """Users per role on the bus, each allowed only its own subjects.

    When ``enabled`` the embedded server is started with one user per role
    (runtime/security.py writes the ``authorization`` block) and every
    connection logs in as its role. Production requires it.
    """

    enabled: bool = False
    admin_password: Secret | None = None
    audit_password: Secret | None = None
    auditor_password: Secret | None = None
    bridge_password: Secret | None = None
    client_password: Secret | None = None
    embedder_password: Secret | None = None
    ingestor_password: Secret | None = None
    retriever_password: Secret | None = None
    router_password: Secret | None = None
    trimmer_password: Secret | None = None
    min_password_length: Annotated[int, Meta(ge=8)] = 16

    def password(self, role: str) -> Secret | None:
        if role not in ROLES:
            raise KeyError(f"no role {role!r}; roles: {', '.join(ROLES)}")
        value: Secret | None = getattr(self, f"{role}_password")
        return value

    def problems(self, roles: Collection[str] | None = None) -> list[str]:
        """What stops these settings from securing the bus (empty when they do).

        ``roles``: the roles this process logs in as (an actor's own, ``admin`` for
        the CLI); only their passwords are needed, so a container can hold just its
        own. ``None``: every role, as a process that writes the server's users needs.
        """
        if not self.enabled:
            return ["security.enabled is false: every connection may publish and subscribe "
                    "anywhere (set RAGBUS_SECURITY__ENABLED=true)"]
        unknown = sorted(set(roles or ()) - set(ROLES))
        if unknown:
            raise KeyError(f"no role {', '.join(map(repr, unknown))}; roles: {', '.join(ROLES)}")
        found: list[str] = []
        for role in (ROLES if roles is None else [r for r in ROLES if r in roles]):
            secret = self.password(role)
            env = f"RAGBUS_SECURITY__{role.upper()}_PASSWORD"
            if secret is None or not secret.get():
                found.append(f"security.{role}_password is not set (e.g. {env})")
            elif len(secret.get()) < self.min_password_length:
                found.append(f"security.{role}_password is shorter than "
                             f"{self.min_password_length} characters: use a random one")
        return found
