"""Circuit-breaker state shared by every router replica.

A transition is published on ``<prefix>.breaker.<provider>`` and stored under the
provider's key in the ``<prefix>_breakers`` KV bucket, so a replica that hears it
stops calling a failing provider at once and a replica that starts later reads
the current state. ``revision`` is the KV revision the transition was stored at:
replicas apply a transition only if it is newer than what they hold, so messages
that arrive out of order (or twice) cannot move a breaker backwards.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec
from nats.js.api import KeyValueConfig, StorageType

from ._base import Message
from ._names import Subjects

__all__ = ("BreakerState", "BreakerTransition", "breakers_bucket", "stored_transition")


class BreakerState(StrEnum):
    """closed: calls go through; open: calls are skipped until ``until``;
    half_open: one probe is in flight (claimed by ``replica``) until ``until``."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerTransition(Message, frozen=True, kw_only=True):
    """A provider's breaker moved to ``state``; the KV value and the bus message alike."""

    provider: str
    state: BreakerState
    # why: "rate_limited", "failures", "probe", "probe_succeeded", "probe_failed"
    reason: str = ""
    # epoch ms: when an open breaker may be probed, or when a probe claim expires
    until: int | None = None
    at: int
    replica: str = ""
    failures: int = 0
    message: str = ""
    revision: int = 0


def breakers_bucket(s: Subjects) -> KeyValueConfig:
    """One key per provider (the provider name), the latest transition as its value."""
    return KeyValueConfig(bucket=s.bucket("breakers"), history=1, storage=StorageType.FILE,
                          description="router circuit breakers: provider -> BreakerTransition")


def stored_transition(value: bytes | None, revision: int | None) -> BreakerTransition | None:
    """A breaker as kept in the bucket, carrying its KV revision; None for a deleted or
    unreadable entry (a bad value must not stop a router or ``ragbus status``)."""
    if value is None:
        return None
    try:
        stored = msgspec.json.decode(value, type=BreakerTransition)
    except msgspec.DecodeError:
        return None
    return msgspec.structs.replace(stored, revision=revision or 0)
