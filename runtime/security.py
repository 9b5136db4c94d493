"""Least privilege on the bus: one NATS user per role, allowed only its own subjects.

Each role's allow-lists come from the subject table (README): an actor may
subscribe to what it serves and publish what it sends, nothing else. Replies to
requests need no grant (``allow_responses``); streamed events go to a
``reply_to`` inbox, so only the actors that stream (retriever, trimmer, router)
may publish into inboxes. Every role reads only its own inbox prefix
(``_INBOX.<role>.``), so no one can listen to another's replies. Only the
audit-logger and the auditor role may read the audit stream; nobody but the
actors may write to it, each under its own role's name (``<prefix>.audit.<role>.>``).

:func:`authorization_config` renders the ``authorization { users = [...] }``
block for nats-server, with the passwords from the settings (the embedded
server's include file) or as ``$RAGBUS_SECURITY__<ROLE>_PASSWORD`` references
(the shipped ``nats-server.conf``). :func:`credentials` tells a connection which
user, password and inbox prefix to use.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ragbus.config import ROLES, NatsSettings, Secret, SecuritySettings, Settings
from ragbus.subjects import Subjects

from .connection import NATS, connect

__all__ = (
    "ACTOR_ROLES",
    "BACKUP_BUCKETS",
    "CACHE_BUCKETS",
    "ROLES",
    "STATE_BUCKETS",
    "Credentials",
    "MissingCredentialsError",
    "Role",
    "UnsafePasswordError",
    "audit_role_of",
    "authorization_config",
    "connect_as",
    "credentials",
    "inbox_prefix",
    "role_for_actor",
    "role_table",
    "roles",
    "write_server_include",
)

#: The role each actor (by its ``Actor.name``) connects as.
ACTOR_ROLES: dict[str, str] = {
    "audit-logger": "audit",
    "bridge": "bridge",
    "context-trimmer": "trimmer",
    "embedder": "embedder",
    "ingestor": "ingestor",
    "retriever": "retriever",
    "router": "router",
}


class MissingCredentialsError(LookupError):
    """Security is on but a role has no password to log in with."""


class UnsafePasswordError(ValueError):
    """A password that cannot be written into a nats-server configuration as is."""


@dataclass(frozen=True, slots=True)
class Role:
    """A NATS user's permissions: subjects it may publish to and subscribe to."""

    name: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    deny_publish: tuple[str, ...] = ()
    allow_responses: bool = False

    def permissions(self) -> dict[str, Any]:
        publish: dict[str, Any] = {"allow": list(self.publish)}
        if self.deny_publish:
            publish["deny"] = list(self.deny_publish)
        perms: dict[str, Any] = {"publish": publish, "subscribe": {"allow": list(self.subscribe)}}
        if self.allow_responses:
            perms["allow_responses"] = True
        return perms


@dataclass(frozen=True, slots=True)
class Credentials:
    user: str
    password: Secret = field(repr=False)
    inbox_prefix: str

    def options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect`` / ``runtime.connect``."""
        return {"user": self.user, "password": self.password.get(),
                "inbox_prefix": self.inbox_prefix}


def inbox_prefix(role: str) -> str:
    return f"_INBOX.{role}"


def audit_role_of(actor: str) -> str:
    """The role an actor's audit events are published under: its bus role, or, for a
    publisher that is no actor of ours (a third party, a test), its own name.

    The audit-logger keeps an event only if this, for the event's ``actor``, is the
    role in its subject: each role may publish under its own name only, so no role can
    put an event in another's name.
    """
    return ACTOR_ROLES.get(actor, actor)


def role_for_actor(actor: str) -> str:
    try:
        return ACTOR_ROLES[actor]
    except KeyError:
        raise LookupError(
            f"actor {actor!r} has no bus role: add it to runtime.security.ACTOR_ROLES and give "
            "the role its allow-lists in roles()") from None


# -- JetStream API grants ---------------------------------------------------------------
def _stream_admin(stream: str) -> list[str]:
    """Create, update and look at one stream (what ``ensure_stream`` does)."""
    return [f"$JS.API.STREAM.{op}.{stream}" for op in ("INFO", "CREATE", "UPDATE")]


def _bucket(bucket: str) -> list[str]:
    """Open, read, write and watch one KV bucket."""
    stream = f"KV_{bucket}"
    return [*_stream_admin(stream), f"$KV.{bucket}.>", *_kv_reads(stream)]


def _bucket_reader(bucket: str) -> list[str]:
    """Read and watch one KV bucket that someone else writes."""
    stream = f"KV_{bucket}"
    return [f"$JS.API.STREAM.INFO.{stream}", *_kv_reads(stream)]


def _kv_reads(stream: str) -> list[str]:
    """Gets, watchers (ordered, unnamed consumers) and kv_entries' pull consumer."""
    return [
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.>",
        f"$JS.API.CONSUMER.DELETE.{stream}.>",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.>",
    ]


def _objects(bucket: str) -> list[str]:
    """Open, put, get, list and delete the objects of one object store bucket (uploads,
    ``runtime.archive``'s backups): chunks and a meta message under ``$O.<bucket>.``,
    gets through an ordered consumer (flow control answered), replacing or deleting
    purges the old chunks. nats-py finds the bucket's stream by subject before a get
    (``STREAM.NAMES``: stream names, nothing they hold)."""
    stream = f"OBJ_{bucket}"
    return [*_stream_admin(stream), f"$O.{bucket}.>", f"$JS.API.STREAM.PURGE.{stream}",
            f"$JS.FC.{stream}.>", "$JS.API.STREAM.NAMES", *_kv_reads(stream)]


def _cache_admin(bucket: str) -> list[str]:
    """Look at and empty one KV bucket (``ragbus cache stats|purge``), nothing else."""
    stream = f"KV_{bucket}"
    return [f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.STREAM.PURGE.{stream}"]


def _given_up(stream: str, durable: str) -> str:
    """JetStream's word that a durable gave up on a message (``Actor._given_up``)."""
    return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{durable}"


def _work_queue(stream: str, durable: str) -> list[str]:
    """A kernel ``durable=`` endpoint's consumer, plus reading and removing a message it
    gave up on (the audit stream's consumer gets no such right: nothing deletes audit)."""
    return [*_durable(stream, durable), f"$JS.API.STREAM.MSG.GET.{stream}",
            f"$JS.API.STREAM.MSG.DELETE.{stream}"]


def _durable(stream: str, durable: str) -> list[str]:
    """Create, pull from and acknowledge one durable consumer, and no other."""
    return [
        f"$JS.API.CONSUMER.INFO.{stream}.{durable}",
        f"$JS.API.CONSUMER.CREATE.{stream}.{durable}",
        f"$JS.API.CONSUMER.CREATE.{stream}.{durable}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
        f"$JS.ACK.{stream}.{durable}.>",
    ]


def _readers(stream: str, protected: str) -> tuple[list[str], list[str]]:
    """Any consumer of ``stream`` except the ``protected`` durable (allow, deny)."""
    allow = [
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.>",
        f"$JS.API.CONSUMER.DELETE.{stream}.>",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.>",
        f"$JS.ACK.{stream}.>",
    ]
    deny = [
        f"$JS.API.CONSUMER.*.{stream}.{protected}",
        f"$JS.API.CONSUMER.*.{stream}.{protected}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{protected}",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{protected}",
        f"$JS.ACK.{stream}.{protected}.>",
    ]
    return allow, deny


def roles(s: Subjects, *, audit_durable: str = "audit-logger",
          ingest_durable: str = "ingestor") -> dict[str, Role]:
    """Every role's permissions under the prefix of ``s``."""
    p = s.prefix
    audit = s.audit_role  # each role writes audit events under its own name only
    ingest = s.ingest_stream
    index = s.index_stream
    serving = ["$SRV.>", s.cancel_all]  # every actor: discovery and cancellation

    def inbox(role: str) -> str:
        return inbox_prefix(role) + ".>"

    any_inbox = "_INBOX.>"  # streamed events go to whichever inbox a requester named
    auditor_allow, auditor_deny = _readers(s.audit_stream, audit_durable)
    backups = _objects(s.bucket("backup"))  # archives between their owner and the CLI
    table = [
        Role("embedder", allow_responses=True,
             publish=(audit("embedder"), *_bucket(s.bucket("embeddings"))),
             subscribe=(s.embed, *serving, inbox("embedder"))),
        Role("retriever", allow_responses=True,
             publish=(s.embed, s.search_all, s.trim, any_inbox, audit("retriever"),
                      *_bucket(s.bucket("corpus")), *_bucket(s.bucket("retrieval")),
                      *backups,
                      # index.apply stores the update; each replica reads its shards'
                      # updates through consumers of its own, shares snapshots
                      s.index_log_all, *_stream_admin(index), *_kv_reads(index),
                      f"$JS.API.CONSUMER.DURABLE.CREATE.{index}.>",
                      f"$JS.API.CONSUMER.LIST.{index}",
                      *_objects(s.bucket("shards"))),
             subscribe=(s.query, s.search_all, f"{p}.index.apply.*",
                        s.snapshot_shard_all, s.restore_shard_all, *serving,
                        inbox("retriever"))),
        Role("trimmer", allow_responses=True,
             # cancels the brief's summary when it gives up waiting for it
             publish=(s.generate, s.embed, s.cancel_all, any_inbox, audit("trimmer"),
                      *_bucket(s.bucket("memory"))),
             # session.get|list|delete: conversation memory read and forgotten
             subscribe=(s.trim, s.memory_append, s.session_all, *serving, inbox("trimmer"))),
        Role("router", allow_responses=True,
             # pings its own replicas to split providers' rate limits among them
             publish=(s.breaker_all, s.memory_append, any_inbox, audit("router"),
                      "$SRV.PING.router",
                      *_bucket(s.bucket("breakers")), *_bucket(s.bucket("answers"))),
             subscribe=(s.generate, s.breaker_all, *serving, inbox("router"))),
        Role("ingestor", allow_responses=True,
             publish=(s.embed, s.index_log_all, *_stream_admin(index),
                      f"{p}.ingest.progress.*",
                      s.corpus_version, audit("ingestor"), *_stream_admin(ingest),
                      *_work_queue(ingest, ingest_durable), *_bucket(s.bucket("jobs")),
                      *_bucket(s.bucket("docs")), *_bucket(s.bucket("corpus")),
                      *_objects(s.bucket("uploads"))),
             subscribe=(f"{p}.docs.*", f"{p}.jobs.*", _given_up(ingest, ingest_durable),
                        *serving, inbox("ingestor"))),
        Role("audit", allow_responses=True,
             publish=(audit("audit"), *_stream_admin(s.audit_stream),
                      *_durable(s.audit_stream, audit_durable), *backups),
             # ratings of answers, kept as answer.feedback events
             subscribe=(s.feedback, s.snapshot_audit, s.restore_audit, *serving,
                        inbox("audit"))),
        Role("auditor", publish=tuple(auditor_allow), deny_publish=tuple(auditor_deny),
             subscribe=(inbox("auditor"),)),
        Role("bridge", allow_responses=True,
             # /readyz pings the actors a query needs
             # the page's "new conversation" forgets the socket's own session
             publish=(s.query, s.cancel_all, s.feedback, s.session("delete"), audit("bridge"),
                      "$SRV.PING",
                      *_bucket(s.bucket("limits")),
                      # POST /upload: files into the uploads store, the job into the queue
                      s.ingest_submit, *_stream_admin(ingest), *_bucket(s.bucket("jobs")),
                      *_objects(s.bucket("uploads"))),
             subscribe=(f"{p}.ingest.progress.*", *serving, inbox("bridge"))),
        Role("client",
             publish=(s.query, s.cancel_all, s.feedback),
             subscribe=(inbox("client"),)),
        Role("admin",
             publish=(s.query, s.cancel_all, s.ingest_submit, f"{p}.docs.*", f"{p}.jobs.*",
                      # ragbus session show|export|list|delete
                      s.session_all,
                      # ragbus eval --judge: grades asked of the router's providers
                      s.generate,
                      # ragbus backup|restore: asks the owners of shards and audit store
                      s.backup_all,
                      # ragbus status: every stream's leader and replicas, and how far
                      # each shard replica is behind the index stream
                      "$SRV.>", "$JS.API.STREAM.LIST", *_stream_admin(ingest),
                      f"$JS.API.CONSUMER.LIST.{index}", f"$JS.API.STREAM.MSG.GET.{index}",
                      # ragbus backup: the ingest stream's messages, read by sequence
                      f"$JS.API.STREAM.MSG.GET.{ingest}",
                      # ragbus backup|restore: every bucket read, written, emptied (--force)
                      *(grant for name in BACKUP_BUCKETS for grant in
                        (*_bucket(s.bucket(name)), f"$JS.API.STREAM.PURGE.KV_{s.bucket(name)}")),
                      *_bucket(s.bucket("jobs")), *_objects(s.bucket("uploads")),
                      *_bucket_reader(s.bucket("breakers")),
                      *(grant for cache in CACHE_BUCKETS
                        for grant in _cache_admin(s.bucket(cache))),
                      *backups),
             subscribe=(f"{p}.ingest.progress.*", inbox("admin"))),
    ]
    by_name = {role.name: role for role in table}
    assert set(by_name) == set(ROLES), "config._audit.ROLES and the role table disagree"
    return by_name


#: the shared caches, each a KV bucket under the prefix (``ragbus cache``)
CACHE_BUCKETS = ("retrieval", "answers", "embeddings")
#: the KV buckets ``ragbus backup`` keeps: the system's state, then the caches (--caches)
STATE_BUCKETS = ("docs", "corpus", "jobs", "memory", "breakers")
BACKUP_BUCKETS = (*STATE_BUCKETS, *CACHE_BUCKETS)


def role_table(s: Subjects, *, audit_durable: str = "audit-logger") -> str:
    """The role table as the README shows it (a test keeps the two equal).

    JetStream API grants are folded into what they give: a KV bucket read, written
    or purged, a stream created, a durable consumer owned.
    """
    rows = ["| role | publishes | subscribes | JetStream |", "|---|---|---|---|"]
    for role in roles(s, audit_durable=audit_durable).values():
        plain = [f"`{x}`" for x in role.publish if not x.startswith(("$JS.", "$KV.", "$O."))]
        if role.allow_responses:
            plain.append("replies")
        rows.append(f"| {role.name} | {', '.join(plain) or '-'} | "
                    f"{', '.join(f'`{x}`' for x in role.subscribe)} | "
                    f"{'; '.join(_jetstream_grants(role)) or '-'} |")
    return "\n".join(rows) + "\n"


def _jetstream_grants(role: Role) -> list[str]:
    grants = set(role.publish)
    info = "$JS.API.STREAM.INFO."  # every grant on a stream comes with looking at it
    streams = sorted(g.removeprefix(info) for g in grants if g.startswith(info))
    said: list[str] = ["every stream's state (list)"] if "$JS.API.STREAM.LIST" in grants else []
    for stream in streams:
        if stream.startswith("OBJ_") and f"$O.{stream[4:]}.>" in grants:
            said.append(f"objects `{stream[4:]}` read, write, delete")
            continue
        if stream.startswith("KV_"):
            bucket = stream[3:]
            if f"$KV.{bucket}.>" in grants:
                said.append(f"KV `{bucket}` read, write")
            elif f"$JS.API.DIRECT.GET.{stream}" in grants:
                said.append(f"KV `{bucket}` read")
            elif f"$JS.API.STREAM.PURGE.{stream}" in grants:
                said.append(f"KV `{bucket}` size, purge")
            continue
        what = ["create"] if f"$JS.API.STREAM.CREATE.{stream}" in grants else []
        durables = sorted(g.split(".")[3] for g in grants
                          if g.startswith(f"$JS.ACK.{stream}.") and g.count(".") == 4)
        what += [f"durable `{d}`" for d in durables]
        if f"$JS.ACK.{stream}.>" in grants:
            denied = sorted({g.split(".")[3] for g in role.deny_publish
                             if g.startswith(f"$JS.ACK.{stream}.")})
            what.append("read, any consumer" +
                        "".join(f" but `{d}`" for d in denied))
        said.append(f"`{stream}` {', '.join(what)}")
    return said


# -- credentials --------------------------------------------------------------------
def credentials(security: SecuritySettings, role: str) -> Credentials:
    """Who to log in as for ``role`` (its password comes from the settings)."""
    password = security.password(role)
    if password is None or not password.get():
        raise MissingCredentialsError(
            f"security is enabled but role {role!r} has no password: set "
            f"security.{role}_password (RAGBUS_SECURITY__{role.upper()}_PASSWORD)")
    return Credentials(user=role, password=password, inbox_prefix=inbox_prefix(role))


async def connect_as(nats: NatsSettings, security: SecuritySettings, role: str, *,
                     url: str | None = None, name: str = "ragbus", **options: Any) -> NATS:
    """Connect as ``role`` when security is on, as ``nats`` says otherwise."""
    if security.enabled:
        options = {**credentials(security, role).options(), **options}
    return await connect(nats, url=url, name=name, **options)


# -- nats-server configuration ------------------------------------------------------
def _quoted(password: str, role: str) -> str:
    if any(c in password for c in '"\\\n\r\t') or not password.isprintable():
        raise UnsafePasswordError(
            f"the password of role {role!r} contains a quote, backslash or control "
            "character: use letters, digits and other punctuation")
    return json.dumps(password)


def authorization_config(s: Subjects, security: SecuritySettings, *,
                         passwords: Literal["settings", "env"] = "settings",
                         audit_durable: str = "audit-logger") -> str:
    """The ``authorization { users = [...] }`` block for nats-server.

    ``passwords="env"`` writes ``$RAGBUS_SECURITY__<ROLE>_PASSWORD`` references,
    which nats-server resolves from its environment when it starts.
    """
    lines = ["authorization {", "  users = ["]
    for role in roles(s, audit_durable=audit_durable).values():
        if passwords == "env":
            secret = f"$RAGBUS_SECURITY__{role.name.upper()}_PASSWORD"
        else:
            secret = _quoted(credentials(security, role.name).password.get(), role.name)
        perms = role.permissions()
        lines.append("    {")
        lines.append(f"      user: {json.dumps(role.name)}")
        lines.append(f"      password: {secret}")
        lines.append("      permissions: {")
        for direction in ("publish", "subscribe"):
            lists = perms[direction]
            lines.append(f"        {direction}: {{")
            for kind in ("allow", "deny"):
                if kind in lists:
                    lines.append(f"          {kind}: [")
                    lines.extend(f"            {json.dumps(subject)}" for subject in lists[kind])
                    lines.append("          ]")
            lines.append("        }")
        if role.allow_responses:
            lines.append("        allow_responses: true")
        lines.append("      }")
        lines.append("    }")
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def write_server_include(path: Path, settings: Settings, security: SecuritySettings) -> Path:
    """Write the authorization block, readable by this user only, for ``EmbeddedNats(include=)``."""
    text = authorization_config(Subjects(settings.subject_prefix), security,
                                audit_durable=settings.audit.durable)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return path
