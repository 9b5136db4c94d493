"""Every subject, stream and bucket name, built from one prefix.

Actors never spell a subject themselves: they ask a :class:`Subjects` built from
the configured prefix, so two deployments can share one NATS account by picking
different prefixes, and a rename happens in exactly one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ("DEFAULT_PREFIX", "Subjects", "validate_token")

DEFAULT_PREFIX = "rag"

# A subject token: no whitespace, no dots, no wildcards (NATS would split or match on them).
_TOKEN = re.compile(r"^[A-Za-z0-9_\-:]+$")
_PREFIX = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")


def validate_token(value: str, what: str) -> str:
    """Refuse a value that would change a subject's shape when spliced into it."""
    if not _TOKEN.fullmatch(value):  # match() and $ would let a trailing newline in
        raise ValueError(
            f"{what} {value!r} cannot be used in a subject: use letters, digits, '_', '-' or ':'"
        )
    return value


@dataclass(frozen=True, slots=True)
class Subjects:
    """The subject tree under one prefix (see the table in README.md)."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not _PREFIX.fullmatch(self.prefix):
            raise ValueError(
                f"subject prefix {self.prefix!r} is invalid: use dot-separated tokens of "
                "letters, digits, '_' or '-', e.g. 'rag' or 'team1.rag'"
            )

    def _s(self, *tokens: str) -> str:
        return ".".join((self.prefix, *tokens))

    # -- query path (core NATS, request/reply or choreography) -------------------------
    @property
    def query(self) -> str:
        return self._s("query")

    @property
    def embed(self) -> str:
        return self._s("embed")

    def search(self, shard: str) -> str:
        return self._s("search", validate_token(shard, "shard"))

    @property
    def search_all(self) -> str:
        return self._s("search", "*")

    @property
    def trim(self) -> str:
        return self._s("trim")

    @property
    def generate(self) -> str:
        return self._s("generate")

    @property
    def memory_append(self) -> str:
        return self._s("memory", "append")

    def session(self, verb: str) -> str:
        """``session.get``, ``session.list``, ``session.delete``: conversation memory, served
        by the context-trimmer."""
        return self._s("session", validate_token(verb, "session verb"))

    @property
    def session_all(self) -> str:
        return self._s("session", "*")

    @property
    def feedback(self) -> str:
        """Any client's rating of an answer (``Feedback``), kept as an audit event."""
        return self._s("feedback")

    # -- control (core NATS, fan-out to every instance) ---------------------------------
    def cancel(self, request_id: str) -> str:
        return self._s("cancel", validate_token(request_id, "request_id"))

    @property
    def cancel_all(self) -> str:
        return self._s("cancel", "*")

    def breaker(self, provider: str) -> str:
        return self._s("breaker", validate_token(provider, "provider"))

    @property
    def breaker_all(self) -> str:
        return self._s("breaker", "*")

    @property
    def corpus_version(self) -> str:
        return self._s("corpus", "version")

    # -- ingestion (JetStream work queue + core progress events) ------------------------
    @property
    def ingest_submit(self) -> str:
        return self._s("ingest", "submit")

    def ingest_progress(self, job_id: str) -> str:
        return self._s("ingest", "progress", validate_token(job_id, "job_id"))

    def index_apply(self, shard: str) -> str:
        return self._s("index", "apply", validate_token(shard, "shard"))

    def index_log(self, shard: str) -> str:
        """A shard's index updates, stored in the index stream in the order they apply."""
        return self._s("index", "log", validate_token(shard, "shard"))

    @property
    def index_log_all(self) -> str:
        return self._s("index", "log", "*")

    def docs(self, verb: str) -> str:
        """``docs.list``, ``docs.get``, ``docs.delete``: the ingestor's document API."""
        return self._s("docs", validate_token(verb, "docs verb"))

    def jobs(self, verb: str) -> str:
        """``jobs.list``, ``jobs.get``: the ingestor's job API."""
        return self._s("jobs", validate_token(verb, "jobs verb"))

    # -- backup and restore (core request/reply, admin only) ---------------------------
    def snapshot_shard(self, shard: str) -> str:
        return self._s("backup", "snapshot", "shard", validate_token(shard, "shard"))

    def restore_shard(self, shard: str) -> str:
        return self._s("backup", "restore", "shard", validate_token(shard, "shard"))

    @property
    def snapshot_shard_all(self) -> str:
        return self._s("backup", "snapshot", "shard", "*")

    @property
    def restore_shard_all(self) -> str:
        return self._s("backup", "restore", "shard", "*")

    @property
    def snapshot_audit(self) -> str:
        return self._s("backup", "snapshot", "audit")

    @property
    def restore_audit(self) -> str:
        return self._s("backup", "restore", "audit")

    @property
    def backup_all(self) -> str:
        """Every backup request (the admin role's permission)."""
        return self._s("backup", ">")

    # -- audit (JetStream) ---------------------------------------------------------------
    def audit(self, role: str, kind: str) -> str:
        """``<prefix>.audit.<role>.<kind>``: the bus role the publisher logs in as, then the
        kind. Each role may publish under its own name only, so the subject, not the
        event, says who published (the audit-logger holds the event's ``actor`` to it)."""
        # kinds are dotted ("query.received"), which keeps them filterable by wildcard
        tokens = kind.split(".")
        for token in tokens:
            validate_token(token, "audit kind")
        return self._s("audit", validate_token(role, "audit role"), *tokens)

    def audit_role(self, role: str) -> str:
        """Every audit subject one role may publish on (its permission)."""
        return self._s("audit", validate_token(role, "audit role"), ">")

    @property
    def audit_all(self) -> str:
        return self._s("audit", ">")

    def parse_audit(self, subject: str) -> tuple[str, str] | None:
        """``(role, kind)`` of an audit subject under this prefix, else None."""
        head = self._s("audit", "")
        if not subject.startswith(head):
            return None
        role, _, kind = subject[len(head):].partition(".")
        if not role or not kind:
            return None
        return role, kind

    # -- JetStream resources (names may not contain dots) ------------------------------
    def _resource(self, name: str) -> str:
        return f"{self.prefix.replace('.', '_').upper()}_{name}"

    @property
    def ingest_stream(self) -> str:
        return self._resource("INGEST")

    @property
    def index_stream(self) -> str:
        return self._resource("INDEX")

    @property
    def audit_stream(self) -> str:
        return self._resource("AUDIT")

    def bucket(self, name: str) -> str:
        """A KV bucket name, e.g. ``bucket("jobs")`` -> ``rag_jobs``."""
        return f"{self.prefix.replace('.', '_')}_{validate_token(name, 'bucket')}"
