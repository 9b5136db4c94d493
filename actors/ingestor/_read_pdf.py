"""PDF text through pypdf.

pypdf is imported lazily so the rest of the ingestor works without it; a PDF
then fails as ``unsupported`` with the install command instead of the whole
actor failing to import.
"""

from __future__ import annotations

import io
from pathlib import Path

from ._read_errors import (
    EmptyDocumentError,
    ReaderError,
    UnreadableFileError,
    UnsupportedFormatError,
)
from ._read_text import normalize_newlines
from ._read_types import SourceDocument

__all__ = ("read_pdf",)


def read_pdf(data: bytes, path: Path, doc_id: str) -> SourceDocument:
    """Pages joined by blank lines; ``metadata["page_starts"]`` maps offsets back to pages.

    ``page_starts`` holds ``[page number, offset]`` pairs for the pages that
    have text, so a chunk's ``start`` can be cited as a page.
    """
    try:
        from pypdf import PdfReader
    except ImportError as exc:  # pragma: no cover - pypdf is a dependency
        raise UnsupportedFormatError(path, "reading PDF needs pypdf: pip install pypdf") from exc
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise UnreadableFileError(
                path, "is password-protected; remove the password (qpdf --decrypt) and re-ingest"
            )
        pages = [page.extract_text() or "" for page in reader.pages]
        info = reader.metadata
        pdf_title = info.title if info is not None else None
    except ReaderError:
        raise
    except Exception as exc:
        # pypdf signals malformed input with many exception types (PdfReadError,
        # ValueError, KeyError, struct.error, ...); all mean "this file is broken".
        raise UnreadableFileError(
            path,
            f"pypdf cannot read it ({type(exc).__name__}: {exc}); check that it opens in a PDF "
            "viewer, or re-export it",
        ) from exc
    parts: list[str] = []
    page_starts: list[list[int]] = []
    offset = 0
    for number, raw in enumerate(pages, 1):
        text = normalize_newlines(raw.replace("\x00", "")).strip()
        if not text:
            continue
        if parts:
            offset += 2  # the "\n\n" between pages
        page_starts.append([number, offset])
        parts.append(text)
        offset += len(text)
    if not parts:
        raise EmptyDocumentError(
            path,
            "has no extractable text (a scanned image?); run OCR on it (e.g. ocrmypdf) "
            "and re-ingest",
        )
    title = pdf_title.strip() if isinstance(pdf_title, str) and pdf_title.strip() else path.stem
    return SourceDocument(
        doc_id=doc_id,
        title=title,
        text="\n\n".join(parts),
        source_path=str(path),
        format="pdf",
        metadata={"pages": len(pages), "page_starts": page_starts},
    )
