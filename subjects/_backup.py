"""Backup and restore of the files only one actor may open (a shard, the audit store).

The retriever alone opens its shard directory and the audit-logger alone writes
the audit store, so ``ragbus backup`` cannot copy them itself: it asks their
owner, which packs a consistent copy into the object store bucket
``<prefix>_backup`` and answers with its name, size and digest. ``ragbus
restore`` puts the archive there and asks the owner to swap it in.
"""

from __future__ import annotations

from typing import Any

import msgspec
from nats.js.api import ObjectStoreConfig, StorageType

from ._base import Message, Request
from ._names import Subjects

__all__ = ("BACKUP_SCHEMA", "Restore", "Restored", "Snapshot", "Snapshotted", "backup_bucket")

#: Bumped when a backup's layout changes incompatibly; ``ragbus restore`` refuses a newer one.
BACKUP_SCHEMA = 1


class Snapshot(Request, frozen=True, kw_only=True):
    """Pack a consistent copy of what the owner keeps into object ``name``."""

    name: str


class Snapshotted(Message, frozen=True, kw_only=True):
    request_id: str
    name: str  # the object in the backup bucket
    bytes: int
    sha256: str
    #: what the owner wants the backup's manifest to say (points, chain head, ...)
    details: dict[str, Any] = msgspec.field(default_factory=dict)


class Restore(Request, frozen=True, kw_only=True):
    """Replace what the owner keeps with the archive in object ``name``.

    Refused when the owner holds anything already, unless ``force``. ``dry_run``
    only asks whether it would be refused (nothing is read or replaced), so the CLI
    can ask every owner before it changes any.
    """

    name: str = ""
    sha256: str = ""
    force: bool = False
    dry_run: bool = False


class Restored(Message, frozen=True, kw_only=True):
    request_id: str
    details: dict[str, Any] = msgspec.field(default_factory=dict)


def backup_bucket(s: Subjects) -> ObjectStoreConfig:
    """Archives in transit between an owner and the CLI: deleted once they are through,
    so the bucket is empty between backups."""
    return ObjectStoreConfig(bucket=s.bucket("backup"), storage=StorageType.FILE,
                             description="ragbus backup and restore archives in transit")
