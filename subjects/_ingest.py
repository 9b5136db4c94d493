"""Ingestion jobs, their progress, and the documents they manage."""

from __future__ import annotations

import enum
from typing import Any

import msgspec

from ._base import Message, Name, Request, new_id
from ._index import DEFAULT_COLLECTION

__all__ = (
    "CorpusVersion",
    "DocChanged",
    "DocDelete",
    "DocGet",
    "DocInfo",
    "DocList",
    "DocListed",
    "FileError",
    "IngestRequest",
    "InlineDocument",
    "JobGet",
    "JobList",
    "JobListed",
    "JobProgress",
    "JobState",
    "UploadedFile",
)


class InlineDocument(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    text: str
    title: str | None = None
    tags: list[str] = msgspec.field(default_factory=list)
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class FileError(msgspec.Struct, frozen=True, kw_only=True):
    """A file (or record) that could not be ingested; the rest of the job goes on."""

    path: str
    code: str
    message: str


class UploadedFile(msgspec.Struct, frozen=True, kw_only=True):
    """A file a client put into the uploads object store (``rag_uploads``) for a job."""

    #: as the client named it (``handbook/intro.md``): the document id, and its suffix
    #: says how to read it
    path: str
    #: the object's name in the bucket: the file's SHA-256 (hex), so a file already
    #: uploaded, by anyone, is not sent again
    object: str
    sha256: str
    size: int


class IngestRequest(Request, frozen=True, kw_only=True):
    """Submitted to the ingest work-queue stream (durable, at-least-once).

    Inline ``documents``, ``uploads`` (files in the uploads bucket, from any machine) or
    a ``path`` (file or folder) on the ingestor's host. Re-submitting the same content
    is cheap: unchanged chunks are never re-embedded.
    """

    job_id: Name = msgspec.field(default_factory=new_id)
    documents: list[InlineDocument] = msgspec.field(default_factory=list)
    uploads: list[UploadedFile] = msgspec.field(default_factory=list)
    #: files the client did not upload (too large, unsupported, unreadable): recorded as
    #: the job's per-file errors
    skipped: list[FileError] = msgspec.field(default_factory=list)
    path: str | None = None
    tags: list[str] = msgspec.field(default_factory=list)
    collection: Name = DEFAULT_COLLECTION


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class JobProgress(Message, frozen=True, kw_only=True):
    """Kept in the jobs bucket and published on ``<prefix>.ingest.progress.<job_id>``."""

    job_id: str
    state: JobState
    progress: float = 0.0  # 0..1
    files_total: int = 0
    files_done: int = 0
    docs_done: int = 0
    docs_changed: int = 0
    chunks_total: int = 0
    chunks_done: int = 0
    embeddings_computed: int = 0
    embeddings_reused: int = 0
    #: documents embedded again although unchanged: the embedding model or the chunking
    #: settings differ from those they were indexed with
    docs_reembedded: int = 0
    errors: list[FileError] = msgspec.field(default_factory=list)
    message: str = ""
    submitted_at: int = 0
    updated_at: int = 0
    finished_at: int | None = None
    attempt: int = 1
    #: once succeeded: the index stream sequence of the job's last update (None: it wrote
    #: none). Pass it as ``Query.min_corpus_version`` to read this job's writes
    corpus_version: int | None = None

    @property
    def finished(self) -> bool:
        return self.state in (JobState.SUCCEEDED, JobState.FAILED)


class CorpusVersion(Message, frozen=True, kw_only=True):
    """Raised on every change to a collection, so caches keyed by it invalidate: the index
    stream sequence of the collection's last update whose job has finished."""

    collection: str
    version: int
    job_id: str | None = None


class DocInfo(msgspec.Struct, frozen=True, kw_only=True):
    doc_id: str
    collection: str
    version: int
    title: str | None = None
    source: str | None = None
    tags: list[str] = msgspec.field(default_factory=list)
    chunks: int = 0
    deleted: bool = False
    updated_at: int = 0


class DocList(Request, frozen=True, kw_only=True):
    collection: Name = DEFAULT_COLLECTION
    include_deleted: bool = False
    limit: int = 100
    offset: int = 0


class DocListed(Message, frozen=True, kw_only=True):
    request_id: str
    docs: list[DocInfo]
    total: int


class DocGet(Request, frozen=True, kw_only=True):
    doc_id: str
    collection: Name = DEFAULT_COLLECTION


class DocDelete(Request, frozen=True, kw_only=True):
    """Soft delete (hidden from search, versions kept), or ``purge`` (removed)."""

    doc_id: str
    collection: Name = DEFAULT_COLLECTION
    purge: bool = False


class DocChanged(Message, frozen=True, kw_only=True):
    request_id: str
    doc: DocInfo
    purged: bool = False


class JobGet(Request, frozen=True, kw_only=True):
    job_id: Name


class JobList(Request, frozen=True, kw_only=True):
    limit: int = 50


class JobListed(Message, frozen=True, kw_only=True):
    request_id: str
    jobs: list[JobProgress]
