"""Bytes to text: encoding detection, binary detection, newline normalisation.

Chunk offsets index into the decoded text, so every reader normalises
newlines to ``\\n`` here, once, before anything else sees the text.
"""

from __future__ import annotations

import codecs
import unicodedata
from pathlib import Path

from ._read_errors import BinaryFileError, UnreadableFileError

__all__ = ("decode_text", "normalize_newlines")

_SNIFF_BYTES = 8192
# Text written by people has almost no control characters; binary data
# decoded as Windows-1252 has many.
_MAX_CONTROL_RATIO = 0.05
_ALLOWED_CONTROLS = frozenset("\t\n\r\f\v")
_BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16: its BOM starts with UTF-16-LE's
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def decode_text(data: bytes, path: Path) -> tuple[str, str]:
    """``(text, encoding)``. UTF-8 (or a BOM's encoding) first, Windows-1252 as a fallback.

    Windows-1252 is the one legacy encoding common enough in office-made text
    files to be worth guessing; it rejects a few byte values, so random binary
    data still fails instead of becoming mojibake.
    """
    encoding = next((enc for bom, enc in _BOMS if data.startswith(bom)), None)
    if encoding is None:
        if b"\x00" in data[:_SNIFF_BYTES]:
            raise BinaryFileError(
                path,
                "contains NUL bytes, so it is binary (an image, archive or office file "
                "renamed?); convert it to text, Markdown or PDF, or remove it from the folder",
            )
        encoding = "utf-8"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        if encoding != "utf-8":
            raise UnreadableFileError(
                path,
                f"starts with a {encoding} byte-order mark but is not {encoding}: {exc}; "
                "re-save it as UTF-8",
            ) from exc
        try:
            text, encoding = data.decode("cp1252"), "cp1252"
        except UnicodeDecodeError:
            raise UnreadableFileError(
                path,
                f"is not UTF-8 (invalid byte at offset {exc.start}) nor Windows-1252; "
                "re-save it as UTF-8",
            ) from exc
    if _looks_binary(text[:_SNIFF_BYTES]):
        raise BinaryFileError(
            path,
            "is mostly control characters, so it is binary, not text; convert it to text, "
            "Markdown or PDF, or remove it from the folder",
        )
    return normalize_newlines(text), encoding


def normalize_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _looks_binary(sample: str) -> bool:
    if not sample:
        return False
    controls = sum(
        1 for c in sample if c not in _ALLOWED_CONTROLS and unicodedata.category(c) == "Cc"
    )
    return controls / len(sample) > _MAX_CONTROL_RATIO
