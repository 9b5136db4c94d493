"""``ragbus ingest``, ``ragbus docs`` and ``ragbus jobs``: the ingestion path from a shell."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import anyio
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ragbus.actors.ingestor import SUPPORTED_SUFFIXES, walk_folder
from ragbus.config import Loaded
from ragbus.subjects import (
    DocChanged,
    DocDelete,
    DocGet,
    DocInfo,
    DocList,
    DocListed,
    FileError,
    IngestRequest,
    JobGet,
    JobList,
    JobListed,
    JobProgress,
    JobState,
    Subjects,
    UploadedFile,
)

from ..client import Client
from ..connection import NATS
from ..ingest import open_uploads, upload
from ..security import connect_as
from ._jobs import follow_job, submit_job

__all__ = ("add_commands",)

T = TypeVar("T")
out = Console()


def _when(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _with_nats(args: argparse.Namespace, work: Callable[[NATS, Subjects], Awaitable[T]]) -> T:
    loaded: Loaded = args.loaded
    url: str = args.nats_url

    async def run() -> T:
        nc = await connect_as(loaded.settings.nats, loaded.settings.security, "admin", url=url,
                              name="ragbus-cli", max_reconnect_attempts=2)
        try:
            return await work(nc, Subjects(loaded.settings.subject_prefix))
        finally:
            await nc.close()

    return anyio.run(run)


def _progress_line(p: JobProgress) -> str:
    again = (f" · {p.docs_reembedded} docs re-embedded (new model or chunking)"
             if p.docs_reembedded else "")
    return (f"files {p.files_done}/{p.files_total} · docs {p.docs_done} · chunks "
            f"{p.chunks_done}/{p.chunks_total} · embedded {p.embeddings_computed} · reused "
            f"{p.embeddings_reused}{again} · errors {len(p.errors)}")


def _print_job(p: JobProgress) -> None:
    colour = {"succeeded": "green", "failed": "red"}.get(p.state.value, "yellow")
    out.print(f"job {p.job_id}: [{colour}]{p.state.value}[/] {p.message}")
    out.print(_progress_line(p))
    if p.errors:
        table = Table("file", "code", "problem", title="per-file errors")
        for e in p.errors:
            table.add_row(e.path, e.code, e.message)
        out.print(table)


@dataclass(slots=True)
class _Sent:
    """What a client put into the uploads bucket for one job."""

    files: list[UploadedFile] = field(default_factory=list)
    skipped: list[FileError] = field(default_factory=list)
    sent: int = 0
    bytes_sent: int = 0


def _local_files(root: Path) -> list[tuple[Path, str, FileError | None]]:
    """(file, name the job gives it, why it is not uploaded) for a file or a folder: a
    folder's files are named ``<folder>/<relative path>``, a file by its name, so the
    document ids do not depend on where the client keeps them."""
    if root.is_dir():
        return [(e.path, f"{root.name}/{e.relative}", None if e.error is None else
                 FileError(path=f"{root.name}/{e.relative}", code=e.error.code,
                           message=f"{root.name}/{e.relative}: {e.error.message}"))
                for e in walk_folder(root)]
    if not root.is_file():
        raise SystemExit(f"{root} is not a file or folder here: give one to upload, or "
                         "--server-path for a path on the ingestor's host")
    if root.suffix.lower() not in SUPPORTED_SUFFIXES:
        known = ", ".join(sorted(SUPPORTED_SUFFIXES))
        raise SystemExit(f"{root.name}: the ingestor reads {known} files only")
    return [(root, root.name, None)]


async def upload_files(nc: NATS, root: Path, s: Subjects, *, replicas: int,
                       max_bytes: int) -> _Sent:
    """Put the files under ``root`` into the uploads bucket (each unless its digest is
    there already); oversized, unsupported or unreadable ones become per-file errors."""
    files = _local_files(root)
    store = await open_uploads(nc, s, replicas=replicas)
    result = _Sent()
    for path, name, problem in files:
        if problem is not None:
            result.skipped.append(problem)
            continue
        try:  # stat first: a huge file is refused without being read
            size = path.stat().st_size
            data = b"" if size > max_bytes else await anyio.Path(path).read_bytes()
        except OSError as exc:
            result.skipped.append(FileError(
                path=name, code="unreadable",
                message=f"{name}: cannot be read ({exc.strerror or exc}); not uploaded"))
            continue
        size = max(size, len(data))
        if size > max_bytes:
            result.skipped.append(FileError(
                path=name, code="too_large",
                message=f"{name}: is {size:,} bytes, over the {max_bytes:,}-byte limit "
                        "(ingestor.max_file_bytes); split it, or raise the limit"))
            continue
        done = await upload(store, name, data)
        result.files.append(done.file)
        if done.sent:
            result.sent += 1
            result.bytes_sent += len(data)
    return result


def _cmd_ingest(args: argparse.Namespace) -> int:
    settings = args.loaded.settings
    replicas = settings.nats.replicas
    path = Path(args.path).resolve()

    async def work(nc: NATS, s: Subjects) -> JobProgress | None:
        if args.server_path:
            request = IngestRequest(path=str(path), tags=args.tag or [],
                                    collection=args.collection)
        else:
            sent = await upload_files(nc, path, s, replicas=replicas,
                                      max_bytes=settings.ingestor.max_file_bytes)
            out.print(f"uploaded {sent.sent} files ({sent.bytes_sent:,} bytes); "
                      f"{len(sent.files) - sent.sent} already in the uploads bucket; "
                      f"{len(sent.skipped)} not uploaded")
            request = IngestRequest(uploads=sent.files, skipped=sent.skipped,
                                    tags=args.tag or [], collection=args.collection)
        await submit_job(nc, request, s, replicas=replicas,
                         max_bytes=settings.runtime.max_message_bytes)
        out.print(f"submitted job [cyan]{request.job_id}[/] for {path}")
        if not args.wait:
            return None
        last: JobProgress | None = None
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                      TaskProgressColumn(), TimeElapsedColumn(), TextColumn("{task.fields[line]}"),
                      console=out, transient=False) as bar:
            task = bar.add_task("queued", total=1.0, line="")
            async for last in follow_job(nc, request.job_id, s, timeout_s=args.timeout):
                bar.update(task, completed=last.progress, description=last.state.value,
                           line=_progress_line(last))
        return last

    final = _with_nats(args, work)
    if final is None:
        return 0
    _print_job(final)
    return 0 if final.state == JobState.SUCCEEDED else 1


def _docs_table(docs: list[DocInfo], title: str) -> Table:
    table = Table("doc id", "title", "version", "chunks", "tags", "deleted", "updated",
                  title=title)
    for d in docs:
        table.add_row(d.doc_id, d.title or "", str(d.version), str(d.chunks), ",".join(d.tags),
                      "yes" if d.deleted else "", _when(d.updated_at))
    return table


def _cmd_docs(args: argparse.Namespace) -> int:
    async def work(nc: NATS, s: Subjects) -> int:
        client = Client(nc, s)
        if args.docs_command == "list":
            listed = await client.request(s.docs("list"), DocList(
                collection=args.collection, include_deleted=args.all, limit=args.limit),
                DocListed)
            out.print(_docs_table(listed.docs, f"{listed.total} documents in {args.collection}"))
        elif args.docs_command == "show":
            got = await client.request(s.docs("get"), DocGet(doc_id=args.doc_id,
                                                             collection=args.collection),
                                       DocListed)
            out.print(_docs_table(got.docs, args.doc_id))
        else:
            changed = await client.request(s.docs("delete"), DocDelete(
                doc_id=args.doc_id, collection=args.collection,
                purge=args.docs_command == "purge"), DocChanged)
            verb = "purged" if changed.purged else "deleted (hidden from search; kept)"
            out.print(f"{changed.doc.doc_id}: {verb}")
        return 0

    return _with_nats(args, work)


def _cmd_jobs(args: argparse.Namespace) -> int:
    async def work(nc: NATS, s: Subjects) -> int:
        client = Client(nc, s)
        if args.jobs_command == "show":
            got = await client.request(s.jobs("get"), JobGet(job_id=args.job_id), JobListed)
            _print_job(got.jobs[0])
            return 0
        listed = await client.request(s.jobs("list"), JobList(limit=args.limit), JobListed)
        table = Table("job id", "state", "progress", "docs", "embedded", "reused", "errors",
                      "submitted", title="ingest jobs")
        for j in listed.jobs:
            table.add_row(j.job_id, j.state.value, f"{j.progress:.0%}", str(j.docs_done),
                          str(j.embeddings_computed), str(j.embeddings_reused),
                          str(len(j.errors)), _when(j.submitted_at))
        out.print(table)
        return 0

    return _with_nats(args, work)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ingest = sub.add_parser("ingest", help="upload a file or folder and ingest it")
    ingest.add_argument("path")
    ingest.add_argument("--server-path", action="store_true",
                        help="PATH is on the ingestor's host: submit it without uploading "
                             "(it must be below the ingestor's ingestor.allowed_roots)")
    ingest.add_argument("--tag", action="append", help="tag every document (repeatable)")
    ingest.add_argument("--collection", default="default")
    ingest.add_argument("--wait", action="store_true",
                        help="follow progress; exit non-zero if the job fails")
    ingest.add_argument("--timeout", type=float, default=24 * 3600.0)
    ingest.set_defaults(func=_cmd_ingest, needs_nats=True)

    docs = sub.add_parser("docs", help="list, show, delete or purge documents")
    docs_sub = docs.add_subparsers(dest="docs_command", required=True)
    listing = docs_sub.add_parser("list")
    listing.add_argument("--all", action="store_true", help="include soft-deleted documents")
    listing.add_argument("--limit", type=int, default=100)
    for verb in ("show", "delete", "purge"):
        docs_sub.add_parser(verb).add_argument("doc_id")
    for verb_parser in docs_sub.choices.values():
        verb_parser.add_argument("--collection", default="default")
    docs.set_defaults(func=_cmd_docs, needs_nats=True)

    jobs = sub.add_parser("jobs", help="list or show ingest jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    jobs_sub.add_parser("list").add_argument("--limit", type=int, default=20)
    jobs_sub.add_parser("show").add_argument("job_id")
    jobs.set_defaults(func=_cmd_jobs, needs_nats=True)
