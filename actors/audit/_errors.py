"""Why the audit store cannot be written; every message says what to do about it."""

from __future__ import annotations

__all__ = ("AuditStoreError", "StoreLockedError", "StoreTamperedError")


class AuditStoreError(Exception):
    """The audit store cannot be opened or written."""


class StoreLockedError(AuditStoreError):
    """Another audit-logger holds the store: two writers would fork the hash chain."""


class StoreTamperedError(AuditStoreError):
    """The end of the chain does not check out: appending would hide the damage."""
