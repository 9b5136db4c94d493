"""JSON and JSON Lines files of records, one document per record.

A bad record is skipped and reported, never fatal for its neighbours: in a
corpus of thousands of lines one malformed line should cost one document, not
the file. Only a file with no good record at all raises.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import msgspec

from ._read_errors import BadRecord, BadRecordError, EmptyDocumentError, UnreadableFileError
from ._read_text import normalize_newlines
from ._read_types import DocFormat, ReadResult, RecordFields, SourceDocument

__all__ = ("read_json", "read_jsonl")

# bad records listed in the message of an all-bad file; the full list is on the error
_LISTED = 5
_UNIT: dict[DocFormat, str] = {"jsonl": "line", "json": "item"}


class _BadRecordError(Exception):
    pass


def read_jsonl(text: str, path: Path, file_id: str, fields: RecordFields) -> ReadResult:
    def records() -> Iterator[tuple[int, object]]:
        for number, line in enumerate(text.split("\n"), 1):
            if line.strip():
                yield number, _decode(line)

    return _collect(records(), path, file_id, fields, "jsonl", "source_line")


def read_json(text: str, path: Path, file_id: str, fields: RecordFields) -> ReadResult:
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise UnreadableFileError(
            path,
            f"is not valid JSON ({exc}); fix it, or store one record per line as .jsonl "
            "so that one bad record does not stop the others",
        ) from exc
    if isinstance(value, dict):
        items: list[object] = [value]
    elif isinstance(value, list):
        items = value
    else:
        raise UnreadableFileError(
            path, "must hold a JSON object or a list of objects (one per document)"
        )
    return _collect(enumerate(items, 1), path, file_id, fields, "json", "source_record")


def _decode(line: str) -> object:
    try:
        return msgspec.json.decode(line)
    except msgspec.DecodeError as exc:
        return _BadRecordError(f"invalid JSON: {exc}")


def _collect(
    records: Iterable[tuple[int, object]],
    path: Path,
    file_id: str,
    fields: RecordFields,
    fmt: DocFormat,
    position_key: str,
) -> ReadResult:
    documents: list[SourceDocument] = []
    bad: list[BadRecord] = []
    seen: dict[str, int] = {}
    for position, record in records:
        try:
            if isinstance(record, _BadRecordError):
                raise record
            doc = _document(record, position, path, file_id, fields, fmt, position_key)
            if doc.doc_id in seen:
                raise _BadRecordError(
                    f"duplicate id {doc.doc_id!r} (first at {_UNIT[fmt]} {seen[doc.doc_id]}); "
                    "ids must be unique within a file"
                )
        except _BadRecordError as exc:
            bad.append(BadRecord(position=position, message=str(exc)))
            continue
        seen[doc.doc_id] = position
        documents.append(doc)
    if not documents:
        if not bad:
            raise EmptyDocumentError(path, "holds no records; add records or remove the file")
        listed = "; ".join(f"{_UNIT[fmt]} {b.position}: {b.message}" for b in bad[:_LISTED])
        more = f" (and {len(bad) - _LISTED} more)" if len(bad) > _LISTED else ""
        raise BadRecordError(
            path,
            f"no usable record: {listed}{more}. Check the id/title/text field names "
            f"(looking for id in {list(fields.id_fields)}, text in {list(fields.text_fields)})",
            bad,
        )
    return ReadResult(documents=tuple(documents), bad_records=tuple(bad))


def _document(
    record: object,
    position: int,
    path: Path,
    file_id: str,
    fields: RecordFields,
    fmt: DocFormat,
    position_key: str,
) -> SourceDocument:
    if not isinstance(record, dict):
        raise _BadRecordError(f"is a JSON {type(record).__name__}, not an object")
    doc_id = f"{file_id}#{position}"
    for name in fields.id_fields:
        value = record.get(name)
        if isinstance(value, bool) or value is None:
            continue
        if not isinstance(value, str | int) or not str(value).strip():
            raise _BadRecordError(f"id field {name!r} must be a non-empty string or integer")
        doc_id = str(value)
        break
    title = ""
    for name in fields.title_fields:
        title = _string(record.get(name), name)
        if title:
            break
    parts = [s for s in (_string(record.get(n), n) for n in fields.text_fields) if s]
    if not parts and not title:
        raise _BadRecordError(
            f"has no text: none of the fields {list(fields.text_fields + fields.title_fields)} "
            "holds a non-empty string"
        )
    text = "\n\n".join([title, *parts] if title else parts)
    metadata: dict[str, object] = {}
    if fields.metadata_field is not None:
        extra = record.get(fields.metadata_field)
        if isinstance(extra, dict):
            metadata.update(extra)
        elif extra is not None:
            metadata[fields.metadata_field] = extra
    metadata[position_key] = position
    return SourceDocument(
        doc_id=doc_id,
        title=title,
        text=text,
        source_path=str(path),
        format=fmt,
        metadata=metadata,
    )


def _string(value: object, name: str) -> str:
    """Strings as they are, lists of strings joined as paragraphs, anything else is bad."""
    if value is None:
        return ""
    if isinstance(value, str):
        return normalize_newlines(value).strip()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n\n".join(normalize_newlines(v).strip() for v in value if v.strip())
    raise _BadRecordError(f"field {name!r} must be a string or a list of strings")
