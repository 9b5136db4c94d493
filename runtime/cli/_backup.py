"""``ragbus backup DIR``, ``ragbus backup verify DIR``, ``ragbus restore DIR``.

A backup is a directory: the KV buckets as JSON, the ingest stream's messages as
JSONL, one archive per shard and one of the audit store, and ``manifest.json``
naming every file with its size and SHA-256. The CLI never opens a shard or the
audit store itself: their owners (the retriever, the audit-logger) pack a
consistent copy into the object store bucket ``<prefix>_backup`` on request, and
swap a restored one in (see ``subjects._backup``). Everything else is read and
written over the bus, as admin.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import msgspec
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js.api import StreamConfig
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue
from rich.console import Console

from ragbus.config import Loaded
from ragbus.subjects import (
    BACKUP_SCHEMA,
    Restore,
    Restored,
    Snapshot,
    Snapshotted,
    Subjects,
    new_id,
    now_ms,
)

from ..archive import drop_object, fetch_object, open_backup_bucket, sha256_file, store_object
from ..client import Client
from ..errors import BadRequestError, UnavailableError, UnsupportedVersionError
from ..jetstream import kv_entries, through_elections
from ..security import CACHE_BUCKETS, STATE_BUCKETS, connect_as

__all__ = ("Manifest", "add_commands", "verify_backup")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

MANIFEST = "manifest.json"
#: the manifest's own SHA-256 (it cannot hold it itself), so a change to it is named too
MANIFEST_DIGEST = "manifest.json.sha256"
R = TypeVar("R", Snapshotted, Restored)


class FileEntry(msgspec.Struct, frozen=True, kw_only=True):
    bytes: int
    sha256: str


class Manifest(msgspec.Struct, kw_only=True):
    """What a backup holds; ``schema`` says how to read the rest."""

    schema: int = BACKUP_SCHEMA
    created_ms: int = 0
    prefix: str = "rag"
    files: dict[str, FileEntry] = msgspec.field(default_factory=dict)
    kv: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    streams: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    shards: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    audit: dict[str, Any] | None = None


class _Schema(msgspec.Struct):
    schema: int


class KvEntry(msgspec.Struct, frozen=True):
    key: str
    value: bytes


class KvDump(msgspec.Struct, frozen=True, kw_only=True):
    bucket: str
    config: dict[str, Any]
    entries: list[KvEntry]


class StreamMessage(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    subject: str
    data: bytes
    headers: dict[str, str] | None = None
    time: str | None = None


# -- reading and checking a backup ------------------------------------------------------
def read_manifest(directory: Path) -> Manifest:
    """The backup's manifest; refused if it is missing, unreadable or from a newer ragbus."""
    path = directory / MANIFEST
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BadRequestError(f"{directory} is no ragbus backup: {path} cannot be read "
                              f"({exc.strerror})") from None
    try:
        schema = msgspec.json.decode(raw, type=_Schema).schema
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BadRequestError(f"{path} is corrupted: {exc}") from None
    if schema > BACKUP_SCHEMA:
        raise UnsupportedVersionError(
            f"{directory} was written with backup schema {schema}; this ragbus reads "
            f"schema {BACKUP_SCHEMA} and older: restore it with a newer ragbus",
            details={"schema": schema, "supported": BACKUP_SCHEMA})
    try:
        recorded = (directory / MANIFEST_DIGEST).read_text().split()[0]
    except (OSError, IndexError):
        raise BadRequestError(f"backup file {directory / MANIFEST_DIGEST} is missing or "
                              "empty") from None
    if hashlib.sha256(raw).hexdigest() != recorded:
        raise BadRequestError(f"backup file {path} is corrupted: its SHA-256 is not the one "
                              f"{MANIFEST_DIGEST} holds", details={"file": MANIFEST})
    try:
        return msgspec.json.decode(raw, type=Manifest)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BadRequestError(f"{path} is corrupted: {exc}") from None


def verify_backup(directory: Path) -> Manifest:
    """Check every file the manifest names against its size and SHA-256; the first that
    is missing or differs is named in the error."""
    manifest = read_manifest(directory)
    for name, entry in sorted(manifest.files.items()):
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise BadRequestError(f"{directory / MANIFEST} is corrupted: it names {name!r}, "
                                  "outside the backup")
        path = directory / name
        if not path.is_file():
            raise BadRequestError(f"backup file {path} is missing", details={"file": name})
        size = path.stat().st_size
        digest = sha256_file(path)
        if size != entry.bytes or digest != entry.sha256:
            raise BadRequestError(
                f"backup file {path} is corrupted: SHA-256 {digest} ({size} bytes), the "
                f"manifest says {entry.sha256} ({entry.bytes} bytes)", details={"file": name})
    return manifest


def _record(manifest: Manifest, directory: Path, name: str) -> None:
    path = directory / name
    manifest.files[name] = FileEntry(bytes=path.stat().st_size, sha256=sha256_file(path))


# -- backup -------------------------------------------------------------------------------
async def _backup_kv(js: Any, s: Subjects, name: str, directory: Path,
                     manifest: Manifest) -> None:
    bucket = s.bucket(name)
    try:
        kv: KeyValue = await js.key_value(bucket)
    except BucketNotFoundError:
        manifest.kv[name] = {"bucket": bucket, "absent": True}
        return
    info = await js.stream_info(f"KV_{bucket}")
    entries = await through_elections(lambda: kv_entries(kv))
    dump = KvDump(bucket=bucket, config=info.config.as_dict(),
                  entries=[KvEntry(e.key, e.value or b"") for e in entries])
    file = f"kv/{name}.json"
    (directory / file).write_bytes(msgspec.json.encode(dump))
    _record(manifest, directory, file)
    manifest.kv[name] = {"bucket": bucket, "entries": len(entries)}


async def _backup_stream(js: Any, stream: str, directory: Path, manifest: Manifest) -> None:
    """Every message with its subject, headers, sequence and time: nats-py has no client
    for JetStream's snapshot API, and a work queue takes no second consumer, so the
    messages are read one by one by sequence (``STREAM.MSG.GET``)."""
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        manifest.streams[stream] = {"absent": True}
        return
    last = info.state.last_seq
    file = f"streams/{stream}.jsonl"
    count, seq = 0, info.state.first_seq
    with (directory / file).open("wb") as f:
        while info.state.messages and seq <= last:
            try:
                msg = await js.get_msg(stream, seq=seq, next=True)
            except NotFoundError:
                break
            if msg.seq is None or msg.seq > last:
                break
            f.write(msgspec.json.encode(StreamMessage(
                seq=msg.seq, subject=msg.subject or "", data=msg.data or b"",
                headers=dict(msg.headers) if msg.headers else None,
                time=str(msg.time) if msg.time else None)) + b"\n")
            count += 1
            seq = msg.seq + 1
    _record(manifest, directory, file)
    manifest.streams[stream] = {"config": info.config.as_dict(), "messages": count,
                                "first_seq": info.state.first_seq, "last_seq": last}


async def _ask(nc: NATS, s: Subjects, subject: str, message: Snapshot | Restore,
               reply: type[R], *, timeout_s: float, hint: str) -> R:
    """A request to an owner; nobody serving it names what to start."""
    try:
        return await Client(nc, s).request(subject, message, reply, timeout=timeout_s)
    except UnavailableError as exc:
        raise UnavailableError(f"{exc.message} ({hint})", details=exc.details) from None


async def _from_owner(nc: NATS, s: Subjects, subject: str, name: str, target: Path,
                      timeout_s: float, hint: str) -> Snapshotted:
    """Ask an owner for its snapshot, then move the archive from the bucket to ``target``."""
    obs = await open_backup_bucket(nc, s)
    done = await _ask(nc, s, subject, Snapshot(name=name), Snapshotted, timeout_s=timeout_s,
                      hint=hint)
    try:
        await fetch_object(obs, name, target, sha256=done.sha256, timeout_s=timeout_s)
    finally:
        await drop_object(obs, name)
    return done


def _prepare(directory: Path) -> None:
    if directory.exists() and any(directory.iterdir()):
        raise BadRequestError(f"{directory} is not empty: back up into a new directory")
    for sub in ("kv", "streams", "shards"):
        (directory / sub).mkdir(parents=True, exist_ok=True)


async def run_backup(loaded: Loaded, url: str, directory: Path, *, caches: bool,
                     audit: bool, timeout_s: float) -> Manifest:
    settings = loaded.settings
    s = Subjects(settings.subject_prefix)
    await anyio.to_thread.run_sync(_prepare, directory)
    manifest = Manifest(created_ms=now_ms(), prefix=settings.subject_prefix)
    nc = await connect_as(settings.nats, settings.security, "admin", url=url,
                          name="ragbus-backup", max_reconnect_attempts=2)
    try:
        js = nc.jetstream()
        # the KV first, the shards after: a manifest older than its shard is mended by the
        # next ingest of the document, a shard older than its manifest would not be
        for name in (*STATE_BUCKETS, *(CACHE_BUCKETS if caches else ())):
            await _backup_kv(js, s, name, directory, manifest)
        await _backup_stream(js, s.ingest_stream, directory, manifest)
        backup_id = new_id()
        for shard in settings.retriever.shards:
            file = f"shards/{shard}.tar.gz"
            done = await _from_owner(nc, s, s.snapshot_shard(shard),
                                     f"{backup_id}.shard.{shard}", directory / file,
                                     timeout_s, f"start the retriever serving shard {shard!r}")
            _record(manifest, directory, file)
            manifest.shards[shard] = {"file": file, **done.details}
        if audit:  # last: it holds the events of everything above
            done = await _from_owner(nc, s, s.snapshot_audit, f"{backup_id}.audit",
                                     directory / "audit.tar.gz", timeout_s,
                                     "start the audit-logger, or pass --no-audit")
            _record(manifest, directory, "audit.tar.gz")
            manifest.audit = {"file": "audit.tar.gz", **done.details}
    finally:
        await nc.close()
    raw = msgspec.json.format(msgspec.json.encode(manifest))
    await anyio.Path(directory / MANIFEST).write_bytes(raw)
    await anyio.Path(directory / MANIFEST_DIGEST).write_text(
        f"{hashlib.sha256(raw).hexdigest()}  {MANIFEST}\n")  # as sha256sum writes it
    return manifest


# -- restore -------------------------------------------------------------------------------
async def _kv_held(js: Any, bucket: str) -> int:
    try:
        kv = await js.key_value(bucket)
    except BucketNotFoundError:
        return 0
    return len(await kv_entries(kv))


async def _restore_kv(js: Any, dump: KvDump, *, force: bool) -> None:
    stream = f"KV_{dump.bucket}"
    try:
        await js.stream_info(stream)
    except NotFoundError:  # nobody opened it yet: as it was configured when backed up
        await js.add_stream(StreamConfig.from_response(dict(dump.config)))
    else:
        if force:
            await js.purge_stream(stream)
    kv = await js.key_value(dump.bucket)
    for entry in dump.entries:
        await kv.put(entry.key, entry.value)


async def _to_owner(nc: NATS, s: Subjects, subject: str, path: Path, name: str,
                    sha256: str, force: bool, timeout_s: float, hint: str) -> Restored:
    obs = await open_backup_bucket(nc, s)
    await store_object(obs, name, path, timeout_s=timeout_s)
    try:
        return await _ask(nc, s, subject, Restore(name=name, sha256=sha256, force=force),
                          Restored, timeout_s=timeout_s, hint=hint)
    finally:
        await drop_object(obs, name)


async def _restore_stream(js: Any, stream: str, config: dict[str, Any], path: Path) -> None:
    """Publish the messages again, in order (the stream created as it was if nobody did)."""
    try:
        await js.stream_info(stream)
    except NotFoundError:
        await js.add_stream(StreamConfig.from_response(dict(config)))
    for line in (await anyio.Path(path).read_bytes()).splitlines():
        msg = msgspec.json.decode(line, type=StreamMessage)
        await js.publish(msg.subject, msg.data, headers=msg.headers)


async def run_restore(loaded: Loaded, url: str, directory: Path, *, force: bool,
                      timeout_s: float) -> Manifest:
    manifest = await anyio.to_thread.run_sync(verify_backup, directory)
    settings = loaded.settings
    s = Subjects(settings.subject_prefix)
    if manifest.prefix != settings.subject_prefix:
        raise BadRequestError(f"{directory} is a backup of prefix {manifest.prefix!r}; this "
                              f"system's prefix is {settings.subject_prefix!r}")
    nc = await connect_as(settings.nats, settings.security, "admin", url=url,
                          name="ragbus-restore", max_reconnect_attempts=2)
    try:
        js = nc.jetstream()
        # every refusal before any change: an empty system, or --force
        if not force:
            for name in ("docs", "corpus"):
                held = await _kv_held(js, s.bucket(name))
                if held:
                    raise BadRequestError(
                        f"this system is not empty: KV {s.bucket(name)} holds {held} entries. "
                        "Restore into a freshly started system (ragbus up on an empty data "
                        "directory), or pass --force to replace what it holds")
        hints = {shard: f"start a retriever serving shard {shard!r}"
                 for shard in manifest.shards}
        audit_hint = "start the audit-logger"
        for shard in manifest.shards:
            await _ask(nc, s, s.restore_shard(shard), Restore(force=force, dry_run=True),
                       Restored, timeout_s=min(timeout_s, 30.0), hint=hints[shard])
        if manifest.audit is not None:
            await _ask(nc, s, s.restore_audit, Restore(force=force, dry_run=True), Restored,
                       timeout_s=min(timeout_s, 30.0), hint=audit_hint)
        restore_id = new_id()
        for shard, info in manifest.shards.items():
            file = info["file"]
            await _to_owner(nc, s, s.restore_shard(shard), directory / file,
                            f"{restore_id}.shard.{shard}", manifest.files[file].sha256,
                            force, timeout_s, hints[shard])
        if manifest.audit is not None:
            await _to_owner(nc, s, s.restore_audit, directory / "audit.tar.gz",
                            f"{restore_id}.audit", manifest.files["audit.tar.gz"].sha256,
                            force, timeout_s, audit_hint)
        for name in manifest.kv:
            file = f"kv/{name}.json"
            if file in manifest.files:
                dump = msgspec.json.decode((directory / file).read_bytes(), type=KvDump)
                await _restore_kv(js, dump, force=force)
        if force:  # cached answers of what was replaced could match the restored versions
            for name in CACHE_BUCKETS:
                if f"kv/{name}.json" not in manifest.files:
                    with contextlib.suppress(NotFoundError):
                        await js.purge_stream(f"KV_{s.bucket(name)}")
        for stream, info in manifest.streams.items():
            file = f"streams/{stream}.jsonl"
            if file in manifest.files:
                await _restore_stream(js, stream, info["config"], directory / file)
    finally:
        await nc.close()
    return manifest


# -- commands --------------------------------------------------------------------------------
def _summary(manifest: Manifest) -> str:
    total = sum(f.bytes for f in manifest.files.values())
    kv = sum(v.get("entries", 0) for v in manifest.kv.values())
    points = sum(v.get("points", 0) for v in manifest.shards.values())
    records = manifest.audit.get("records", 0) if manifest.audit else "no audit store"
    return (f"{len(manifest.files)} files, {total} bytes: {kv} KV entries, "
            f"{len(manifest.shards)} shards ({points} points), audit records: {records}")


def _run(job: Callable[[], Awaitable[Manifest]]) -> Manifest:
    """``job`` to its end; the bus failing under it is UNAVAILABLE, said plainly."""
    try:
        return anyio.run(job)
    except NatsError as exc:
        raise UnavailableError(f"NATS failed during the operation ({exc!r}): run it again "
                               "(a restore that got part of the way: with --force)") from None


def _verifying(args: argparse.Namespace) -> bool:
    """``backup verify DIR`` reads files only; ``backup DIR`` talks to the system."""
    return bool(args.backup_target) and args.backup_target[0] == "verify"


def _cmd_backup(args: argparse.Namespace) -> int:
    if _verifying(args):
        if len(args.backup_target) != 2:
            err.print("[red]error:[/] usage: ragbus backup verify DIR")
            return 2
        directory = Path(args.backup_target[1])
        manifest = verify_backup(directory)
        out.print(f"[green]ok:[/] {directory}: {_summary(manifest)}; every digest checks out")
        return 0
    if len(args.backup_target) != 1:
        err.print("[red]error:[/] usage: ragbus backup DIR | ragbus backup verify DIR")
        return 2
    loaded: Loaded = args.loaded
    directory = Path(args.backup_target[0])
    manifest = _run(lambda: run_backup(loaded, args.nats_url, directory, caches=args.caches,
                                       audit=not args.no_audit, timeout_s=args.timeout))
    out.print(f"[green]backed up[/] to {directory}: {_summary(manifest)}")
    return 0


def _cmd_restore(args: argparse.Namespace) -> int:
    loaded: Loaded = args.loaded
    directory = Path(args.directory)
    manifest = _run(lambda: run_restore(loaded, args.nats_url, directory,
                                        force=args.force, timeout_s=args.timeout))
    out.print(f"[green]restored[/] from {directory}: {_summary(manifest)}")
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    backup = sub.add_parser(
        "backup", help="back up a running system into DIR (or: backup verify DIR)",
        usage="ragbus backup [--caches] [--no-audit] [--timeout S] DIR\n"
              "       ragbus backup verify DIR",
        description="ragbus backup DIR: KV buckets, the ingest stream, every shard and the "
        "audit store, with a manifest of digests. ragbus backup verify DIR: check them.")
    backup.add_argument("backup_target", nargs="+", metavar="DIR",
                        help="a new directory to back up into, or `verify DIR` to check one "
                        "(./verify for a directory of that name)")
    backup.add_argument("--caches", action="store_true",
                        help="also the caches (retrieval, answers, embeddings)")
    backup.add_argument("--no-audit", action="store_true",
                        help="leave the audit store out (no audit-logger is running)")
    backup.add_argument("--timeout", type=float, default=300.0,
                        help="seconds an owner may take to pack its snapshot")
    backup.set_defaults(func=_cmd_backup, needs_nats=lambda args: not _verifying(args))

    restore = sub.add_parser("restore", help="restore a backup into an empty running system")
    restore.add_argument("directory", metavar="DIR")
    restore.add_argument("--force", action="store_true",
                         help="replace what a non-empty system holds")
    restore.add_argument("--timeout", type=float, default=300.0,
                         help="seconds an owner may take to swap a snapshot in")
    restore.set_defaults(func=_cmd_restore, needs_nats=True)

