"""One ingest job: read sources, chunk, embed what is new, write the index, keep manifests.

Per document the work is a diff against its manifest: chunks whose hash (of the
text indexed for them, title context included) is known are kept (their payload
is patched to the new version), new chunks are embedded and upserted under
deterministic ids, vanished chunks are deleted. An
unchanged document costs one KV read. Documents run concurrently (bounded), so
the embedder's micro-batcher always has work queued.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from nats.aio.client import Client as NATS
from nats.js.errors import KeyNotFoundError, ObjectNotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from ragbus.config import IngestorSettings
from ragbus.runtime import BadRequestError, Client
from ragbus.runtime.jetstream import store_index_update, through_elections
from ragbus.runtime.text import BM25Encoder
from ragbus.subjects import (
    Embed,
    Embedded,
    FileError,
    IndexUpdate,
    IngestRequest,
    PayloadPatch,
    PointUpsert,
    SparseVector,
    Subjects,
    UploadedFile,
    deadline_after,
    now_ms,
)

from ._chunking import Chunk, ChunkedText, ChunkingConfig, chunk_text, sha256_hex
from ._manifest import ChunkRef, Manifest, Manifests, VersionEntry
from ._points import chunk_payload, embedded_text, point_id
from ._progress import Progress
from ._read_errors import ForbiddenPathError, ReaderError
from ._read_types import ReaderOptions, RecordFields, SourceDocument
from ._readers import check_before_reading, read_data, read_file, walk_folder
from ._roots import SETTING, allowed_roots, check_path, inside

__all__ = ("Doc", "JobRunner", "inline_documents")

# points per IndexUpdate: ~6 KB each with parent text, well under the 1 MiB message limit
_UPSERT_BATCH = 64
#: names what ``embed_context`` embeds; part of the index spec, so turning the setting on
#: or off makes the next ingest re-embed documents that did not change
_CONTEXT_RECIPE = "embed:title+headings/1"


@dataclass(frozen=True, slots=True)
class Doc:
    """A document ready to sync, whatever it was read from."""

    doc_id: str
    title: str
    text: str
    source: str
    markdown: bool
    tags: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def content_sha256(self) -> str:
        h = hashlib.sha256()
        for part in (self.title, self.text, "\x1f".join(sorted(self.tags))):
            h.update(part.encode("utf-8", "surrogatepass"))
            h.update(b"\x00")
        return h.hexdigest()


def _from_source(source: SourceDocument, tags: list[str]) -> Doc:
    return Doc(
        doc_id=source.doc_id,
        title=source.title,
        text=source.text,
        source=source.source_path,
        markdown=source.markdown,
        tags=tags,
        metadata=dict(source.metadata),
    )


def inline_documents(request: IngestRequest) -> list[Doc]:
    return [
        Doc(
            doc_id=d.id,
            title=d.title or d.id,
            text=d.text,
            source="inline",
            markdown=False,
            tags=sorted({*request.tags, *d.tags}),
            metadata=d.metadata,
        )
        for d in request.documents
    ]


class JobRunner:
    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        config: IngestorSettings,
        manifests: Manifests,
        progress: Progress,
        request: IngestRequest,
        uploads: ObjectStore | None = None,
        corpus: KeyValue | None = None,
    ) -> None:
        self.nc = nc
        self.client = Client(nc, subjects)
        self.corpus = corpus
        #: the index stream sequence of the newest update this job stored (None: none yet)
        self.last_seq: int | None = None
        self._model_checked = False
        self.uploads = uploads
        self.subjects = subjects
        self.config = config
        self.manifests = manifests
        self.progress = progress
        self.request = request
        self.collection = request.collection
        self.chunking = ChunkingConfig(
            chunk_tokens=config.chunk_tokens,
            overlap_tokens=config.overlap_tokens,
            parent_tokens=config.parent_tokens,
        )
        self.reader = ReaderOptions(
            max_bytes=config.max_file_bytes,
            records=RecordFields(
                id_fields=tuple(config.id_fields),
                title_fields=tuple(config.title_fields),
                text_fields=tuple(config.text_fields),
            ),
        )
        self._slots = anyio.Semaphore(config.docs_in_flight)
        self.model_id: str | None = None
        self.dim = 0
        self.bm25 = BM25Encoder(k1=config.bm25_k1, b=config.bm25_b, avg_len=config.bm25_avg_len)

    # -- the job ------------------------------------------------------------------------
    @property
    def index_spec(self) -> str:
        """The embedding model, chunking settings and what is embedded for a chunk, as
        recorded in each manifest: an unchanged document is skipped only if it was indexed
        under the same spec."""
        assert self.model_id is not None, "run() learns the model first"
        c = self.chunking
        embedded = _CONTEXT_RECIPE if self.config.embed_context else "embed:chunk"
        return (f"{self.model_id}|chunks {c.chunk_tokens}/{c.overlap_tokens}/"
                f"{c.parent_tokens}|{embedded}")

    async def run(self) -> None:
        roots = allowed_roots(self.config.allowed_roots)
        # refused before any work: FORBIDDEN names the setting (see _roots)
        root = check_path(self.request.path, roots) if self.request.path else None
        await self._embed(["model probe"])  # which model: it decides what is up to date
        inline = inline_documents(self.request)
        files = list(self._files(root, roots)) if root is not None else []
        uploaded, skipped = self.request.uploads, self.request.skipped
        self.progress.files_total = (len(files) + len(uploaded) + len(skipped)
                                     + (1 if inline else 0))
        await self.progress.publish(force=True)
        if inline:
            await self._sync_all(inline)
            self.progress.files_done += 1
        for refused in skipped:  # the client's word on files it did not upload
            self.progress.errors.append(refused)
            self.progress.files_done += 1
        for upload in uploaded:
            await self._ingest_upload(upload)
            self.progress.files_done += 1
            self.progress.file_progress(0, 0)
            await self.progress.publish()
        for path, error in files:
            if error is not None:
                self._error(path, error.code, str(error))
            else:
                await self._ingest_file(path)
            self.progress.files_done += 1
            self.progress.file_progress(0, 0)
            await self.progress.publish()

    def _files(self, root: Path, roots: tuple[Path, ...]
               ) -> Iterator[tuple[Path, ReaderError | None]]:
        if not root.is_dir():
            yield root, None
            return
        for entry in walk_folder(root):
            if entry.error is None and not inside(entry.path, roots):  # a symlink out
                yield entry.path, ForbiddenPathError(
                    entry.path, f"leads outside {SETTING} (a symlink); not read")
            else:
                yield entry.path, entry.error

    async def _ingest_file(self, path: Path) -> None:
        try:
            result = await anyio.to_thread.run_sync(read_file, path, self.reader)
        except ReaderError as exc:
            self._error(path, exc.code, str(exc))
            return
        for bad in result.bad_records:
            self._error(path, "bad_record", f"record {bad.position}: {bad.message}")
        tags = sorted(set(self.request.tags))
        await self._sync_all([_from_source(d, tags) for d in result.documents])

    async def _ingest_upload(self, upload: UploadedFile) -> None:
        """A file from the uploads object store: checked by name and size before it is
        fetched, by digest after, then read like a file of that name."""
        path = upload.path
        try:
            check_before_reading(path, upload.size, self.reader)
        except ReaderError as exc:
            self._error(path, exc.code, str(exc))
            return
        data = await self._fetch(upload)
        if data is None:
            return
        try:
            result = await anyio.to_thread.run_sync(
                functools.partial(read_data, data, path, self.reader, doc_id=path))
        except ReaderError as exc:
            self._error(path, exc.code, str(exc))
            return
        for bad in result.bad_records:
            self._error(path, "bad_record", f"record {bad.position}: {bad.message}")
        tags = sorted(set(self.request.tags))
        await self._sync_all([_from_source(d, tags) for d in result.documents])

    async def _fetch(self, upload: UploadedFile) -> bytes | None:
        if self.uploads is None:
            self._error(upload.path, "unreadable", "this ingestor has no uploads bucket")
            return None
        store = self.uploads
        try:
            got = await through_elections(lambda: store.get(upload.object))
        except ObjectNotFoundError:
            self._error(upload.path, "unreadable",
                        f"{upload.path}: its upload ({upload.object}) is no longer in the "
                        "uploads bucket (removed when an earlier run of the job finished, or "
                        "expired): ingest the file again")
            return None
        data = got.data or b""
        if hashlib.sha256(data).hexdigest() != upload.sha256:
            self._error(upload.path, "unreadable",
                        f"{upload.path}: the uploaded bytes do not match the file's SHA-256 "
                        "(replaced while the job ran?): ingest the file again")
            return None
        return data

    def _error(self, path: Path | str, code: str, message: str) -> None:
        self.progress.errors.append(FileError(path=str(path), code=code, message=message))

    async def _sync_all(self, docs: list[Doc]) -> None:
        done = 0

        async def one(doc: Doc) -> None:
            nonlocal done
            try:
                await self.sync(doc)
            finally:
                self._slots.release()
                done += 1
                self.progress.docs_done += 1
                self.progress.file_progress(done, len(docs))
                await self.progress.publish()

        async with anyio.create_task_group() as tg:
            for doc in docs:
                await self._slots.acquire()
                tg.start_soon(one, doc)

    # -- one document ---------------------------------------------------------------------
    async def sync(self, doc: Doc) -> None:
        old = await self.manifests.get(self.collection, doc.doc_id)
        content = doc.content_sha256
        spec = self.index_spec
        same_spec = old is not None and old.index_spec in (spec, None)  # None: before specs
        if old is not None and not old.deleted and old.content_sha256 == content and same_spec:
            self.progress.chunks_total += len(old.chunks)
            self.progress.chunks_done += len(old.chunks)
            self.progress.embeddings_reused += len(old.chunks)
            return
        if old is not None and not same_spec:
            self.progress.docs_reembedded += 1
        if len(doc.text) > 50_000:  # keep the loop responsive for long documents
            chunked = await anyio.to_thread.run_sync(
                functools.partial(chunk_text, doc.text, self.chunking, markdown=doc.markdown)
            )
        else:
            chunked = chunk_text(doc.text, self.chunking, markdown=doc.markdown)
        # keyed by what is indexed: with context on, a new title re-embeds every chunk
        unique = {sha256_hex(t): (c, t) for c, t in self._indexed(doc, chunked)}
        # a chunk embedded under another spec is not known: its vector is from elsewhere
        known = {ref.sha256: ref.id for ref in old.chunks} if old and same_spec else {}
        fresh = [(sha, c, t) for sha, (c, t) in unique.items() if sha not in known]
        kept = [known[sha] for sha in unique if sha in known]
        vanished = [ref.id for ref in (old.chunks if old else []) if ref.sha256 not in unique]
        version = old.version + 1 if old else 1
        self.progress.chunks_total += len(unique)

        vectors, hits = await self._embed([t for _, _, t in fresh])
        self.progress.embeddings_computed += len(fresh) - hits
        self.progress.embeddings_reused += len(kept) + hits
        created = datetime.now(UTC).isoformat()
        upserts = [
            PointUpsert(
                id=point_id(self.collection, doc.doc_id, sha),
                vector=vectors[i].astype("<f4").tobytes(),
                sparse=self._sparse(t),
                payload=chunk_payload(
                    doc_id=doc.doc_id,
                    title=doc.title,
                    source=doc.source,
                    chunk=c,
                    parent=chunked.parent_of(c),
                    version=version,
                    tags=doc.tags,
                    created_at=created,
                    metadata=doc.metadata,
                ),
            )
            for i, (sha, c, t) in enumerate(fresh)
        ]
        for start in range(0, len(upserts), _UPSERT_BATCH):
            await self._apply(upserts=upserts[start : start + _UPSERT_BATCH])
        patches = [
            PayloadPatch(
                ids=kept,
                payload={
                    "version": version,
                    "tags": doc.tags,
                    "deleted": False,
                    "title": doc.title,
                },
            )
        ]
        await self._apply(deletes=vanished, patches=patches if kept else [])
        chunk_refs = [ChunkRef(point_id(self.collection, doc.doc_id, sha), sha) for sha in unique]
        history = [
            *(old.history if old else []),
            VersionEntry(
                version=version, content_sha256=content, chunks=len(chunk_refs), at=now_ms()
            ),
        ]
        await self.manifests.put(
            Manifest(
                doc_id=doc.doc_id,
                collection=self.collection,
                version=version,
                content_sha256=content,
                chunks=chunk_refs,
                title=doc.title,
                source=doc.source,
                tags=doc.tags,
                deleted=False,
                updated_at=now_ms(),
                history=history,
                index_spec=spec,
            )
        )
        self.progress.chunks_done += len(unique)
        self.progress.docs_changed += 1

    def _indexed(self, doc: Doc, chunked: ChunkedText) -> list[tuple[Chunk, str]]:
        """Each chunk with the text embedded and indexed for it (``embedded_text``)."""
        if not self.config.embed_context:
            return [(c, c.text) for c in chunked.chunks]
        return [(c, embedded_text(c.text, doc.title, chunked.parent_of(c).headings))
                for c in chunked.chunks]

    def _sparse(self, text: str) -> SparseVector | None:
        weights = self.bm25.document(text)
        return weights if weights.indices else None

    async def _embed(self, texts: list[str]) -> tuple[np.ndarray[Any, Any], int]:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32), 0
        parts, hits = [], 0
        for start in range(0, len(texts), self.config.embed_batch):
            reply = await self.client.request(
                self.subjects.embed,
                Embed(
                    texts=texts[start : start + self.config.embed_batch],
                    deadline=self._deadline(),
                    lane="bulk",
                ),
                Embedded,
            )
            self.model_id, self.dim = reply.model_id, reply.dim
            parts.append(np.frombuffer(reply.vectors, dtype="<f4").reshape(-1, reply.dim))
            hits += reply.cache_hits
        return np.concatenate(parts), hits

    async def _apply(
        self,
        *,
        upserts: list[PointUpsert] | None = None,
        deletes: list[str] | None = None,
        patches: list[PayloadPatch] | None = None,
    ) -> None:
        """Store one update in the index stream; it is done when the stream has it (the
        shard's replicas apply it in stream order, each at its own pace)."""
        if not (upserts or deletes or patches):
            return
        if self.model_id is None:
            await self._embed(["dimension probe"])  # the index is created from the model's size
        assert self.model_id is not None
        if upserts and not self._model_checked:
            await self._check_model()
        update = IndexUpdate(
            collection=self.collection,
            model_id=self.model_id,
            dim=self.dim,
            upserts=upserts or [],
            deletes=deletes or [],
            patches=patches or [],
            deadline=self._deadline(),
        )
        self.last_seq = max(self.last_seq or 0,
                            await store_index_update(self.nc, self.subjects, update))

    async def _check_model(self) -> None:
        """One embedding model per collection: its replicas apply whatever the stream
        holds, so an update of another model's vectors is refused here, before it is
        stored. Switching is allowed once the collection holds no document."""
        assert self.model_id is not None
        self._model_checked = True
        if self.corpus is None:
            return
        key = f"{self.collection}.model"
        try:
            entry = await self.corpus.get(key)
            current = entry.value.decode() if entry.value else None
        except KeyNotFoundError:
            current = None
        if current == self.model_id:
            return
        if current is not None and await self.manifests.all(self.collection):
            raise BadRequestError(
                f"shard {self.collection!r} holds vectors of embedding model {current!r}; "
                f"these come from {self.model_id!r}, and the two cannot share a vector space. "
                "To switch models, ingest into a new collection (ragbus ingest PATH "
                "--collection NEW) and query that, or purge this shard's documents first",
                details={"shard_model": current, "update_model": self.model_id})
        await self.corpus.put(key, self.model_id.encode())

    def _deadline(self) -> int:
        job = self.request.deadline
        mine = deadline_after(self.config.request_timeout_s)
        return min(job, mine) if job else mine
