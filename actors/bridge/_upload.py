"""``POST /upload``: files from a browser or any HTTP client become an ingest job.

The WebSocket server speaks only GET, so uploads have a small aiohttp server of their
own on ``bridge.upload_port`` (by default the bridge's port + 1; a free one when the
bridge's port is 0). The same credentials as the socket (``Authorization: Bearer``,
``X-API-Key`` or ``?token=``), the same origins (answered with CORS headers, so the
page can post from its own port). The body is ``multipart/form-data``: file fields
(their file names, folders included, name the documents), and optionally ``tag``
(repeatable) and ``collection`` fields. At most ``bridge.max_upload_bytes`` in all;
each file goes into the uploads object store under its SHA-256 (not sent again if it
is there) and the job is submitted by object names, answered ``202`` with its id.
Progress: ``ragbus jobs show ID``, or the job's KV entry and progress subject.
"""

from __future__ import annotations

import http
import ssl
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
from aiohttp import BodyPartReader, web
from nats.js.object_store import ObjectStore

from ragbus.runtime import TooLargeError
from ragbus.runtime.ingest import open_uploads, submit_job, upload
from ragbus.subjects import (
    DEFAULT_COLLECTION,
    ErrorCode,
    FileError,
    IngestRequest,
    UploadedFile,
    validate_token,
)

from ._errors import AuthDeniedError

if TYPE_CHECKING:
    from ._actor import Bridge

__all__ = ("UPLOAD_PATH", "UploadServer")

UPLOAD_PATH = "/upload"
_READ_CHUNK = 64 * 1024
_CORS_HEADERS = "Authorization, X-API-Key, Content-Type"


class _RefusedError(Exception):
    """An upload answered with an error status and a JSON body saying what to do."""

    def __init__(self, status: http.HTTPStatus, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _document_name(filename: str) -> str:
    """The name a file gets in the job: its relative path, without ``..`` or a root."""
    parts = [p for p in PurePosixPath(filename.replace("\\", "/")).parts
             if p not in ("/", ".", "..")]
    return "/".join(parts)


class UploadServer:
    """The bridge's upload endpoint (started and stopped by the bridge)."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.config = bridge.config
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._store: ObjectStore | None = None

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None) -> int:
        b = self.bridge
        self._store = await open_uploads(b.nc, b.subjects, replicas=b.settings.nats.replicas)
        app = web.Application()
        app.router.add_post(UPLOAD_PATH, self._post)
        app.router.add_route("OPTIONS", UPLOAD_PATH, self._preflight)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=tls)
        await site.start()
        bound = self._runner.addresses[0]
        self.port = int(bound[1])
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- HTTP ---------------------------------------------------------------------------
    def _cors(self, request: web.Request) -> dict[str, str]:
        origin = request.headers.get("Origin")
        if origin is None:
            return {}
        try:
            self.bridge.auth.check_origin(origin)
        except AuthDeniedError:
            return {}
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}

    async def _preflight(self, request: web.Request) -> web.Response:
        headers = self._cors(request)
        if not headers:
            return web.Response(status=http.HTTPStatus.FORBIDDEN)
        return web.Response(status=http.HTTPStatus.NO_CONTENT, headers={
            **headers, "Access-Control-Allow-Methods": "POST",
            "Access-Control-Allow-Headers": _CORS_HEADERS, "Access-Control-Max-Age": "600"})

    async def _post(self, request: web.Request) -> web.Response:
        cors = self._cors(request)
        try:
            with anyio.fail_after(self.config.upload_timeout_s):
                body = await self._accept(request)
        except _RefusedError as exc:
            return _json(exc.status, {"code": exc.code.value, "message": exc.message}, cors)
        except TimeoutError:
            return _json(http.HTTPStatus.GATEWAY_TIMEOUT, {
                "code": ErrorCode.DEADLINE_EXCEEDED.value,
                "message": f"the upload did not finish within {self.config.upload_timeout_s:g}s"
                           " (bridge.upload_timeout_s): send fewer or smaller files"}, cors)
        return _json(http.HTTPStatus.ACCEPTED, body, cors)

    async def _accept(self, request: web.Request) -> dict[str, Any]:
        b = self.bridge
        if not b.accepting:
            raise _RefusedError(http.HTTPStatus.SERVICE_UNAVAILABLE, ErrorCode.UNAVAILABLE,
                           "the bridge is stopping: retry on another")
        address = request.remote or "unknown"
        origin = request.headers.get("Origin")
        try:
            b.auth.check_origin(origin)
            presented = b.auth.presented(request.headers, request.path_qs)
            identity = (b.auth.verify(presented) if presented is not None
                        else b.auth.anonymous(address))
        except AuthDeniedError as exc:
            b.on_denied(exc, origin=origin, address=address)
            status = (http.HTTPStatus.FORBIDDEN if exc.audit_code == "FORBIDDEN"
                      else http.HTTPStatus.UNAUTHORIZED)
            raise _RefusedError(status, ErrorCode(exc.audit_code), exc.reason) from None
        limit = self.config.max_upload_bytes
        if request.content_length is not None and request.content_length > limit:
            raise self._too_large(request.content_length)
        if request.content_type != "multipart/form-data":
            raise _RefusedError(http.HTTPStatus.BAD_REQUEST, ErrorCode.BAD_REQUEST,
                           f"send the files as multipart/form-data, not "
                           f"{request.content_type or 'an empty body'}")
        files, fields = await self._read_parts(request)
        if not files:
            raise _RefusedError(http.HTTPStatus.BAD_REQUEST, ErrorCode.BAD_REQUEST,
                           "no files in the upload: send them as multipart file fields")
        collection = fields.get("collection", [DEFAULT_COLLECTION])[-1]
        try:
            validate_token(collection, "collection")
        except ValueError as exc:
            raise _RefusedError(http.HTTPStatus.BAD_REQUEST, ErrorCode.BAD_REQUEST,
                           str(exc)) from None
        return await self._submit(identity.key, files, fields.get("tag", []), collection)

    def _too_large(self, size: int) -> _RefusedError:
        limit = self.config.max_upload_bytes
        return _RefusedError(http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE, ErrorCode.TOO_LARGE,
                        f"the upload is over {limit:,} bytes ({size:,} or more; "
                        "bridge.max_upload_bytes): send the files in several uploads, or "
                        "ingest them with `ragbus ingest`")

    async def _read_parts(self, request: web.Request
                          ) -> tuple[list[tuple[str, bytes]], dict[str, list[str]]]:
        limit = self.config.max_upload_bytes
        total = 0
        files: list[tuple[str, bytes]] = []
        fields: dict[str, list[str]] = {}
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    raise _RefusedError(http.HTTPStatus.BAD_REQUEST, ErrorCode.BAD_REQUEST,
                                   "nested multipart bodies are not read: send files flat")
                data = bytearray()
                while chunk := await part.read_chunk(_READ_CHUNK):
                    total += len(chunk)
                    if total > limit:
                        raise self._too_large(total)
                    data += chunk
                if part.filename is not None:
                    name = _document_name(part.filename)
                    if not name:
                        raise _RefusedError(http.HTTPStatus.BAD_REQUEST, ErrorCode.BAD_REQUEST,
                                       f"file name {part.filename!r} names no file")
                    files.append((name, bytes(data)))
                elif part.name in ("tag", "collection"):
                    fields.setdefault(part.name, []).append(data.decode("utf-8", "replace"))
        except ValueError as exc:  # aiohttp's word for a malformed multipart body
            raise _RefusedError(http.HTTPStatus.BAD_REQUEST, ErrorCode.BAD_REQUEST,
                           f"malformed multipart body: {exc}") from None
        return files, fields

    async def _submit(self, identity: str, files: list[tuple[str, bytes]], tags: list[str],
                      collection: str) -> dict[str, Any]:
        b = self.bridge
        store = self._store
        assert store is not None, "start() has not run"
        max_file = b.settings.ingestor.max_file_bytes
        sent: list[UploadedFile] = []
        skipped: list[FileError] = []
        new = 0
        try:
            for name, data in files:
                if len(data) > max_file:
                    skipped.append(FileError(
                        path=name, code="too_large",
                        message=f"{name}: is {len(data):,} bytes, over the {max_file:,}-byte "
                                "limit (ingestor.max_file_bytes); split it"))
                    continue
                done = await upload(store, name, data)
                sent.append(done.file)
                new += done.sent
            request = IngestRequest(uploads=sent, skipped=skipped, tags=tags,
                                    collection=collection)
            await submit_job(b.nc, request, b.subjects, replicas=b.settings.nats.replicas,
                             max_bytes=b.settings.runtime.max_message_bytes)
        except TooLargeError as exc:
            raise _RefusedError(http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE, ErrorCode.TOO_LARGE,
                                exc.message) from None
        except Exception as exc:  # the bus: say so, the client may retry
            b.log.warning("bridge.upload_failed", error=repr(exc))
            raise _RefusedError(http.HTTPStatus.SERVICE_UNAVAILABLE, ErrorCode.UNAVAILABLE,
                           "the bridge cannot store the files or submit the job; retry") \
                from exc
        b.log.info("bridge.upload", job_id=request.job_id, identity=identity,
                   files=len(files), uploaded=new)
        return {"job_id": request.job_id, "files": [f.path for f in sent],
                "uploaded": new, "already_stored": len(sent) - new,
                "skipped": [msgspec.to_builtins(s) for s in skipped],
                "progress": f"ragbus jobs show {request.job_id}"}


def _json(status: http.HTTPStatus, body: dict[str, Any],
          headers: dict[str, str]) -> web.Response:
    return web.Response(status=status, body=msgspec.json.encode(body),
                        content_type="application/json", headers=headers)
