"""The audit-logger actor and its store: a durable, hash-chained record of what happened."""

from ._actor import AuditLogger
from ._errors import AuditStoreError, StoreLockedError, StoreTamperedError
from ._files import read_head, store_dir
from ._read import Entry, follow, kind_matches, last_entries, parse_time, read_entries
from ._record import GENESIS, Record
from ._store import AppendResult, AuditStore, Incoming
from ._verify import Problem, VerifyReport, verify_store

__all__ = (
    "GENESIS",
    "AppendResult",
    "AuditLogger",
    "AuditStore",
    "AuditStoreError",
    "Entry",
    "Incoming",
    "Problem",
    "Record",
    "StoreLockedError",
    "StoreTamperedError",
    "VerifyReport",
    "follow",
    "kind_matches",
    "last_entries",
    "parse_time",
    "read_entries",
    "read_head",
    "store_dir",
    "verify_store",
)
