"""Why one file could not be ingested.

One flat family under :class:`ReaderError`, each with a stable ``code`` the
ingestor records per file (and metrics label by), and a message that says
what to do about it. A reader raises one of these for a file and the ingestor
moves on to the next file; it never has to catch anything else.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import ClassVar, Literal

import msgspec

__all__ = (
    "BadRecord",
    "BadRecordError",
    "BinaryFileError",
    "EmptyDocumentError",
    "ForbiddenPathError",
    "ReaderError",
    "ReaderErrorCode",
    "TooLargeError",
    "UnreadableFileError",
    "UnsupportedFormatError",
)

ReaderErrorCode = Literal["too_large", "binary", "empty", "unsupported", "unreadable", "bad_record",
                          "forbidden"]


class BadRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One record of a .json/.jsonl file that was skipped while the others were read."""

    #: 1-based line number (.jsonl) or item number in the list (.json)
    position: int
    message: str


class ReaderError(Exception):
    """A file that yields no documents; ``str()`` is ``"<path>: <what to do>"``."""

    code: ClassVar[ReaderErrorCode] = "unreadable"

    def __init__(self, path: str | os.PathLike[str], message: str) -> None:
        self.path = os.fspath(path)
        self.message = message
        super().__init__(f"{self.path}: {message}")


class TooLargeError(ReaderError):
    code = "too_large"


class BinaryFileError(ReaderError):
    code = "binary"


class EmptyDocumentError(ReaderError):
    code = "empty"


class UnsupportedFormatError(ReaderError):
    code = "unsupported"


class UnreadableFileError(ReaderError):
    code = "unreadable"


class ForbiddenPathError(ReaderError):
    """A file in an allowed folder that really lies outside ``ingestor.allowed_roots``."""

    code = "forbidden"


class BadRecordError(ReaderError):
    """Every record of a record file was bad; ``bad_records`` says which and why."""

    code = "bad_record"

    def __init__(
        self, path: str | os.PathLike[str], message: str, bad_records: Sequence[BadRecord] = ()
    ) -> None:
        super().__init__(path, message)
        self.bad_records = tuple(bad_records)
