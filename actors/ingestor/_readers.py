"""Files to source documents, and folders to files.

``read_file`` either returns documents or raises one :class:`ReaderError`
subclass whose ``code`` the ingestor records for that file before moving on.
Limits are checked from ``stat`` before a byte is read, so a huge file costs
nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from ._read_errors import (
    BadRecord,
    BadRecordError,
    BinaryFileError,
    EmptyDocumentError,
    ReaderError,
    ReaderErrorCode,
    TooLargeError,
    UnreadableFileError,
    UnsupportedFormatError,
)
from ._read_html import extract_html
from ._read_pdf import read_pdf
from ._read_records import read_json, read_jsonl
from ._read_text import decode_text
from ._read_types import (
    DEFAULT_MAX_BYTES,
    DocFormat,
    ReaderOptions,
    ReadResult,
    RecordFields,
    SourceDocument,
)

__all__ = (
    "DEFAULT_MAX_BYTES",
    "SUPPORTED_SUFFIXES",
    "BadRecord",
    "BadRecordError",
    "BinaryFileError",
    "DocFormat",
    "EmptyDocumentError",
    "FolderEntry",
    "ReadResult",
    "ReaderError",
    "ReaderErrorCode",
    "ReaderOptions",
    "RecordFields",
    "SourceDocument",
    "TooLargeError",
    "UnreadableFileError",
    "UnsupportedFormatError",
    "check_before_reading",
    "format_of",
    "read_data",
    "read_file",
    "walk_folder",
)

#: lower-case suffix -> format
SUPPORTED_SUFFIXES: Mapping[str, DocFormat] = MappingProxyType(
    {
        ".txt": "text",
        ".text": "text",
        ".md": "markdown",
        ".markdown": "markdown",
        ".html": "html",
        ".htm": "html",
        ".json": "json",
        ".jsonl": "jsonl",
        ".ndjson": "jsonl",
        ".pdf": "pdf",
    }
)

_DEFAULT_OPTIONS = ReaderOptions()


def format_of(path: str | os.PathLike[str]) -> DocFormat | None:
    return SUPPORTED_SUFFIXES.get(Path(path).suffix.lower())


def read_file(
    path: str | os.PathLike[str],
    options: ReaderOptions = _DEFAULT_OPTIONS,
    *,
    doc_id: str | None = None,
) -> ReadResult:
    """The documents in one file.

    ``doc_id`` names the document of a single-document file (default: the path
    as given; pass the path relative to the ingested folder so ids survive a
    move of the folder). Records of .json/.jsonl files use their own ids.
    """
    path = Path(path)
    if format_of(path) is None:
        raise _unsupported(path)
    return read_data(_read_bytes(path, options.max_bytes), path, options, doc_id=doc_id)


def check_before_reading(path: str | os.PathLike[str], size: int,
                         options: ReaderOptions = _DEFAULT_OPTIONS) -> None:
    """Raise what :func:`read_data` would for ``size`` bytes named ``path`` that it
    refuses by name or size alone, before a byte of them is fetched."""
    path = Path(path)
    if format_of(path) is None:
        raise _unsupported(path)
    if size > options.max_bytes:
        raise _too_large(path, size, options.max_bytes)


def read_data(
    data: bytes,
    path: str | os.PathLike[str],
    options: ReaderOptions = _DEFAULT_OPTIONS,
    *,
    doc_id: str | None = None,
) -> ReadResult:
    """The documents in a file's bytes, read by ``path``'s suffix (an uploaded file:
    ``path`` is the name its client gave it, and no file of that name is opened)."""
    path = Path(path)
    fmt = format_of(path)
    if fmt is None:
        raise _unsupported(path)
    if len(data) > options.max_bytes:
        raise _too_large(path, len(data), options.max_bytes)
    if not data.strip():
        raise EmptyDocumentError(path, "is empty; add content or remove the file")
    file_id = doc_id if doc_id is not None else path.as_posix()
    if fmt == "pdf":
        return ReadResult(documents=(read_pdf(data, path, file_id),))
    text, encoding = decode_text(data, path)
    if fmt == "jsonl":
        return read_jsonl(text, path, file_id, options.records)
    if fmt == "json":
        return read_json(text, path, file_id, options.records)
    title = ""
    if fmt == "html":
        page = extract_html(text)
        title, text = page.title, page.text
    elif fmt == "markdown":
        title = _markdown_title(text)
    if not text.strip():
        raise EmptyDocumentError(path, "has no text to index; add content or remove the file")
    return ReadResult(
        documents=(
            SourceDocument(
                doc_id=file_id,
                title=title or path.stem,
                text=text,
                source_path=str(path),
                format=fmt,
                metadata={"encoding": encoding},
            ),
        )
    )


@dataclass(frozen=True, slots=True)
class FolderEntry:
    """A file found by :func:`walk_folder`; ``error`` is set when it cannot be ingested."""

    path: Path
    #: POSIX path relative to the walked folder: a stable ``doc_id``
    relative: str
    format: DocFormat | None
    error: ReaderError | None = None

    @property
    def supported(self) -> bool:
        return self.error is None


def walk_folder(root: str | os.PathLike[str]) -> Iterator[FolderEntry]:
    """Every non-hidden file under ``root``, depth-first in code-point order of names.

    The order does not depend on the file system, so ingest runs, logs and
    tests repeat exactly. Hidden files and folders (name starting with ".") are
    skipped silently; unsupported files and unlistable folders are yielded with
    ``error`` set so they can be reported. Symlinked folders are not followed
    (no cycles); symlinked files are.
    """
    root = Path(root)
    if not root.is_dir():
        raise UnreadableFileError(root, "is not a folder; pass the folder that holds the files")
    yield from _walk(root, root)


def _walk(folder: Path, root: Path) -> Iterator[FolderEntry]:
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        yield FolderEntry(
            folder,
            folder.relative_to(root).as_posix(),
            None,
            UnreadableFileError(folder, f"cannot be listed ({exc.strerror}); check permissions"),
        )
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        relative = path.relative_to(root).as_posix()
        try:
            if entry.is_dir(follow_symlinks=False):
                yield from _walk(path, root)
                continue
            is_file = entry.is_file()
        except OSError:
            is_file = False
        fmt = format_of(path)
        if not is_file:
            if entry.is_symlink():
                error: ReaderError | None = UnreadableFileError(
                    path, "is a broken symbolic link or points to a folder; fix or remove it"
                )
                yield FolderEntry(path, relative, fmt, error)
            continue  # sockets, fifos, devices: not documents
        yield FolderEntry(path, relative, fmt, None if fmt else _unsupported(path))


def _read_bytes(path: Path, max_bytes: int) -> bytes:
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise UnreadableFileError(path, "is not a regular file")
        if size > max_bytes:
            raise _too_large(path, size, max_bytes)
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)  # the file may have grown since stat
    except OSError as exc:
        raise UnreadableFileError(
            path, f"cannot be read ({exc.strerror or exc}); check that it exists and permissions"
        ) from exc
    if len(data) > max_bytes:
        raise _too_large(path, len(data), max_bytes)
    if not data.strip():
        raise EmptyDocumentError(path, "is empty; add content or remove the file")
    return data


def _too_large(path: Path, size: int, max_bytes: int) -> TooLargeError:
    return TooLargeError(
        path,
        f"is {size:,} bytes, over the {max_bytes:,}-byte limit; split it into smaller "
        "files, or raise the ingestor's max_bytes if it really is one document",
    )


def _unsupported(path: Path) -> UnsupportedFormatError:
    kind = f"{path.suffix.lower()} files are" if path.suffix else "a file without a suffix is"
    known = ", ".join(sorted(SUPPORTED_SUFFIXES))
    return UnsupportedFormatError(
        path,
        f"{kind} not read (supported: {known}); convert it to one of those "
        "or move it out of the ingested folder",
    )


def _markdown_title(text: str) -> str:
    for line in text.split("\n"):
        stripped = line.strip()
        if stripped.startswith("# "):
            return stripped[2:].strip().rstrip("#").strip()
    return ""
