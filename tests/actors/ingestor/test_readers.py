"""Readers: real files in tmp_path, one test per format and per failure code."""

from __future__ import annotations

import codecs
import json
import os
from pathlib import Path

import msgspec
import pytest

from ragbus.actors.ingestor._readers import (
    SUPPORTED_SUFFIXES,
    BadRecordError,
    BinaryFileError,
    EmptyDocumentError,
    ReaderError,
    ReaderOptions,
    RecordFields,
    TooLargeError,
    UnreadableFileError,
    UnsupportedFormatError,
    check_before_reading,
    format_of,
    read_data,
    read_file,
    walk_folder,
)

REPO = Path(__file__).resolve().parents[3]
SCIFACT = REPO.parent / "shared" / "data" / "beir-scifact" / "corpus.jsonl"


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


def only(path: Path, **kwargs: object) -> tuple[str, str, str]:
    result = read_file(path, **kwargs)  # type: ignore[arg-type]
    assert len(result.documents) == 1
    assert not result.bad_records
    doc = result.documents[0]
    return doc.doc_id, doc.title, doc.text


# --- text and Markdown --------------------------------------------------------------


def test_txt(tmp_path: Path) -> None:
    path = write(tmp_path / "notes.txt", "First paragraph.\r\n\r\nSecond one.\rThird line.\n")
    result = read_file(path)
    doc = result.documents[0]
    assert doc.doc_id == path.as_posix()
    assert doc.title == "notes"
    assert doc.text == "First paragraph.\n\nSecond one.\nThird line.\n"
    assert doc.format == "text"
    assert not doc.markdown
    assert doc.source_path == str(path)
    assert doc.metadata == {"encoding": "utf-8"}


def test_explicit_doc_id(tmp_path: Path) -> None:
    path = write(tmp_path / "a.txt", "text")
    assert only(path, doc_id="docs/a.txt")[0] == "docs/a.txt"


def test_utf8_bom_and_utf16_and_cp1252(tmp_path: Path) -> None:
    bom = write(tmp_path / "bom.txt", codecs.BOM_UTF8 + "café".encode())
    assert only(bom)[2] == "café"
    utf16 = write(tmp_path / "u16.txt", "naïve\r\ntext".encode("utf-16"))
    assert only(utf16)[2] == "naïve\ntext"
    legacy = write(tmp_path / "legacy.txt", "Caf\xe9 \x93quoted\x94".encode("latin-1"))
    doc = read_file(legacy).documents[0]
    assert doc.text == "Café “quoted”"
    assert doc.metadata["encoding"] == "cp1252"


def test_markdown_title_from_first_h1(tmp_path: Path) -> None:
    path = write(tmp_path / "guide.md", "Intro line\n\n# The Guide #\n\n## Part\n\nBody.")
    doc = read_file(path).documents[0]
    assert doc.title == "The Guide"
    assert doc.format == "markdown"
    assert doc.markdown
    assert doc.text.startswith("Intro line")


def test_markdown_without_h1_uses_file_name(tmp_path: Path) -> None:
    assert only(write(tmp_path / "readme.markdown", "## Only h2\n\ntext"))[1] == "readme"


# --- HTML ---------------------------------------------------------------------------

PAGE = """<!DOCTYPE html>
<html><head><title>  Cells &amp;
  Signals </title>
<style>body { color: red }</style>
<script>var s = "<p>not text</p>";</script></head>
<body>
<nav><a href="/">Home</a></nav>
<h1>Cell signalling</h1>
<p>Receptors bind <b>ligands</b>
   and start cascades.</p>
<div>A div block.<br>With a line break.</div>
<ul><li>first item</li><li>second item</li></ul>
<h2>Methods</h2>
<pre>x = 1

y = 2</pre>
<table><tr><td>a</td><td>b</td></tr><tr><td>c</td><td>d</td></tr></table>
<noscript>enable js</noscript>
</body></html>
"""


def test_html(tmp_path: Path) -> None:
    doc = read_file(write(tmp_path / "page.html", PAGE)).documents[0]
    assert doc.title == "Cells & Signals"
    assert doc.format == "html"
    assert doc.markdown
    assert doc.text == (
        "Home\n\n"
        "# Cell signalling\n\n"
        "Receptors bind ligands and start cascades.\n\n"
        "A div block.\nWith a line break.\n\n"
        "- first item\n- second item\n\n"
        "## Methods\n\n"
        "```\nx = 1\n\ny = 2\n```\n\n"
        "a b\nc d"
    )
    assert "not text" not in doc.text
    assert "color" not in doc.text
    assert "enable" not in doc.text


def test_html_drops_the_permalink_anchors_of_documentation_generators(tmp_path: Path) -> None:
    """Sphinx and MkDocs end every heading with ``<a class="headerlink">¶</a>``."""
    page = ('<h1>Virtual Environments<a class="headerlink" href="#venv" '
            'title="Link to this heading">¶</a></h1>'
            '<p>Create one with <a href="venv.html">venv</a>.'
            '<a aria-hidden="true" class="anchor" href="#p"><span>#</span></a></p>'
            '<h2 id="x">Caveats<a class="header-anchor" href="#x">#</a></h2><p>None.</p>')
    doc = read_file(write(tmp_path / "tutorial.html", page)).documents[0]
    assert doc.text == ("# Virtual Environments\n\nCreate one with venv.\n\n"
                        "## Caveats\n\nNone.")
    assert "¶" not in doc.text


def test_html_title_falls_back_to_h1_then_file_name(tmp_path: Path) -> None:
    assert only(write(tmp_path / "a.htm", "<h1>Heading</h1><p>x</p>"))[1] == "Heading"
    assert only(write(tmp_path / "b.html", "<p>x</p>"))[1] == "b"


def test_html_without_text_is_empty(tmp_path: Path) -> None:
    path = write(tmp_path / "blank.html", "<html><script>x()</script><p> </p></html>")
    with pytest.raises(EmptyDocumentError) as info:
        read_file(path)
    assert info.value.code == "empty"


# --- JSON records -------------------------------------------------------------------


def test_json_single_record(tmp_path: Path) -> None:
    record = {"id": 7, "title": "T", "text": "Body.", "metadata": {"year": 2020}}
    doc = read_file(write(tmp_path / "one.json", json.dumps(record))).documents[0]
    assert (doc.doc_id, doc.title, doc.text) == ("7", "T", "T\n\nBody.")
    assert doc.metadata == {"year": 2020, "source_record": 1}
    assert doc.format == "json"


def test_json_list_skips_bad_items(tmp_path: Path) -> None:
    records = [
        {"_id": "a", "text": "A."},
        "not an object",
        {"_id": "b"},
        {"_id": "c", "text": "C."},
    ]
    result = read_file(write(tmp_path / "many.json", json.dumps(records)))
    assert [d.doc_id for d in result.documents] == ["a", "c"]
    assert [b.position for b in result.bad_records] == [2, 3]
    assert "not an object" in result.bad_records[0].message
    assert "has no text" in result.bad_records[1].message


def test_invalid_json_file_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(UnreadableFileError, match=r"not valid JSON.*\.jsonl"):
        read_file(write(tmp_path / "broken.json", '{"id": 1,'))
    with pytest.raises(UnreadableFileError, match="object or a list"):
        read_file(write(tmp_path / "scalar.json", "42"))


def test_jsonl_keeps_good_lines_and_reports_bad_ones(tmp_path: Path) -> None:
    lines = [
        json.dumps({"_id": "1", "title": "One", "text": "First."}),
        "{not json",
        "",
        json.dumps({"_id": "2", "text": "Second."}),
        json.dumps([1, 2]),
        json.dumps({"_id": "1", "text": "duplicate"}),
        json.dumps({"_id": {"nested": 1}, "text": "bad id"}),
        json.dumps({"_id": "3", "text": 5}),
        json.dumps({"_id": "4", "text": ["para one", "para two"]}),
    ]
    result = read_file(write(tmp_path / "c.jsonl", "\n".join(lines) + "\n"))
    assert [d.doc_id for d in result.documents] == ["1", "2", "4"]
    assert result.documents[0].metadata == {"source_line": 1}
    assert result.documents[2].text == "para one\n\npara two"
    bad = {b.position: b.message for b in result.bad_records}
    assert sorted(bad) == [2, 5, 6, 7, 8]
    assert bad[2].startswith("invalid JSON")
    assert "duplicate id '1' (first at line 1)" in bad[6]
    assert "id field '_id'" in bad[7]
    assert "'text' must be a string" in bad[8]


def test_jsonl_all_bad_raises_with_the_list(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.jsonl", "\n".join(json.dumps({"x": i}) for i in range(8)))
    with pytest.raises(BadRecordError) as info:
        read_file(path)
    assert info.value.code == "bad_record"
    assert len(info.value.bad_records) == 8
    assert "(and 3 more)" in str(info.value)
    assert "text in" in str(info.value)


def test_configurable_fields_and_positional_ids(tmp_path: Path) -> None:
    lines = [
        json.dumps({"uid": "u1", "name": "N", "abstract": "Abs.", "body": "Body.", "tags": 1}),
        json.dumps({"abstract": "No id here."}),
    ]
    fields = RecordFields(
        id_fields=("uid",), title_fields=("name",), text_fields=("abstract", "body")
    )
    result = read_file(
        write(tmp_path / "r.ndjson", "\n".join(lines)),
        ReaderOptions(records=fields),
        doc_id="r.ndjson",
    )
    first, second = result.documents
    assert (first.doc_id, first.title, first.text) == ("u1", "N", "N\n\nAbs.\n\nBody.")
    assert second.doc_id == "r.ndjson#2"


def test_beir_scifact_corpus_lines(tmp_path: Path) -> None:
    if not SCIFACT.exists():
        pytest.skip(f"BEIR SciFact corpus not found at {SCIFACT}")
    with SCIFACT.open(encoding="utf-8") as f:
        head = [next(f) for _ in range(50)]
    result = read_file(write(tmp_path / "corpus.jsonl", "".join(head)))
    assert len(result.documents) == 50
    assert not result.bad_records
    for line, doc in zip(head, result.documents, strict=True):
        record = json.loads(line)
        assert doc.doc_id == record["_id"]
        assert doc.title == record["title"]
        assert doc.text == f"{record['title']}\n\n{record['text']}"
        assert doc.format == "jsonl"


# --- PDF ----------------------------------------------------------------------------


def pdf_bytes(pages: list[str]) -> bytes:
    """A minimal valid PDF, written by hand: one Helvetica text line per page."""
    n = len(pages)
    font = 3 + 2 * n
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids ["
        + b" ".join(f"{3 + 2 * i} 0 R".encode() for i in range(n))
        + f"] /Count {n} >>".encode(),
    ]
    for i, text in enumerate(pages):
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 {font} 0 R >> >> /Contents {4 + 2 * i} 0 R >>".encode()
        )
        objects.append(f"<< /Length {len(stream)} >>\nstream\n".encode() + stream + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return bytes(out)


def test_pdf_text_is_extracted_per_page(tmp_path: Path) -> None:
    path = write(tmp_path / "paper.pdf", pdf_bytes(["Hello PDF world.", "Second page text."]))
    doc = read_file(path).documents[0]
    assert doc.text == "Hello PDF world.\n\nSecond page text."
    assert doc.title == "paper"
    assert doc.format == "pdf"
    assert doc.metadata == {"pages": 2, "page_starts": [[1, 0], [2, 18]]}
    assert doc.text[18:].startswith("Second")


def test_pdf_title_from_metadata_and_blank_pages(tmp_path: Path) -> None:
    from pypdf import PdfReader, PdfWriter

    source = write(tmp_path / "src.pdf", pdf_bytes(["Only text."]))
    writer = PdfWriter()
    writer.add_blank_page(612, 792)
    writer.append(PdfReader(source))
    writer.add_metadata({"/Title": "A Titled Paper"})
    titled = tmp_path / "titled.pdf"
    with titled.open("wb") as f:
        writer.write(f)
    doc = read_file(titled).documents[0]
    assert doc.title == "A Titled Paper"
    assert doc.metadata["page_starts"] == [[2, 0]]


def test_pdf_without_text_is_empty(tmp_path: Path) -> None:
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(612, 792)
    path = tmp_path / "scan.pdf"
    with path.open("wb") as f:
        writer.write(f)
    with pytest.raises(EmptyDocumentError, match="OCR"):
        read_file(path)


def test_encrypted_pdf_is_unreadable(tmp_path: Path) -> None:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(write(tmp_path / "s.pdf", pdf_bytes(["Secret."]))))
    writer.encrypt(user_password="pw", owner_password="owner", algorithm="RC4-128")
    path = tmp_path / "locked.pdf"
    with path.open("wb") as f:
        writer.write(f)
    with pytest.raises(UnreadableFileError, match="password"):
        read_file(path)


def test_corrupt_pdf_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(UnreadableFileError, match="pypdf cannot read it"):
        read_file(write(tmp_path / "junk.pdf", b"%PDF-1.4\nthis is not really a pdf"))


# --- failures -----------------------------------------------------------------------


def test_too_large_is_refused_before_reading(tmp_path: Path) -> None:
    path = write(tmp_path / "big.txt", "x" * 11)
    with pytest.raises(TooLargeError) as info:
        read_file(path, ReaderOptions(max_bytes=10))
    assert info.value.code == "too_large"
    assert "11 bytes" in info.value.message
    assert "10-byte limit" in info.value.message
    assert only(path, options=ReaderOptions(max_bytes=11))[2] == "x" * 11


# --- bytes read by a name (uploads) -----------------------------------------------------

def test_bytes_named_like_a_file_read_as_that_file(tmp_path: Path) -> None:
    content = "# Guide\n\nIntro.\n\n## Install\n\nRun it.\n"
    on_disk = read_file(write(tmp_path / "guide.md", content), doc_id="handbook/guide.md")
    uploaded = read_data(content.encode(), "handbook/guide.md", doc_id="handbook/guide.md")
    assert uploaded.documents == tuple(
        msgspec.structs.replace(d, source_path="handbook/guide.md") for d in on_disk.documents)
    assert not (tmp_path / "handbook").exists()  # nothing of that name was opened


@pytest.mark.parametrize(("name", "data", "error"), [
    ("tool.exe", b"MZ", UnsupportedFormatError),
    ("big.txt", b"x" * 11, TooLargeError),
    ("empty.txt", b"  \n", EmptyDocumentError),
    ("blob.txt", b"\x00\x01binary\x00" * 10, BinaryFileError),
])
def test_bytes_get_the_errors_a_file_would(name: str, data: bytes,
                                           error: type[ReaderError]) -> None:
    with pytest.raises(error):
        read_data(data, name, ReaderOptions(max_bytes=10 if name == "big.txt" else 1000))


def test_what_name_or_size_refuses_is_refused_before_fetching() -> None:
    with pytest.raises(UnsupportedFormatError):
        check_before_reading("tool.exe", 2)
    with pytest.raises(TooLargeError) as info:
        check_before_reading("big.txt", 11, ReaderOptions(max_bytes=10))
    assert "11 bytes" in info.value.message
    check_before_reading("fine.md", 10, ReaderOptions(max_bytes=10))  # no error


def test_default_limit_is_10_mib() -> None:
    assert ReaderOptions().max_bytes == 10 * 1024 * 1024


def test_binary_files(tmp_path: Path) -> None:
    png = write(tmp_path / "image.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64))
    with pytest.raises(BinaryFileError, match="NUL bytes"):
        read_file(png)
    controls = write(tmp_path / "ctl.md", bytes(range(1, 9)) * 20)
    with pytest.raises(BinaryFileError) as info:
        read_file(controls)
    assert info.value.code == "binary"


@pytest.mark.parametrize("content", [b"", b"  \n\n\t "])
def test_empty_files(tmp_path: Path, content: bytes) -> None:
    with pytest.raises(EmptyDocumentError) as info:
        read_file(write(tmp_path / "e.txt", content))
    assert info.value.code == "empty"


def test_unsupported_suffix(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedFormatError, match=r"\.docx files are not read") as info:
        read_file(write(tmp_path / "report.docx", b"PK\x03\x04"))
    assert info.value.code == "unsupported"
    assert format_of("X.PDF") == "pdf"
    assert format_of("noext") is None


def test_unreadable(tmp_path: Path) -> None:
    with pytest.raises(UnreadableFileError, match="cannot be read"):
        read_file(tmp_path / "missing.txt")
    (tmp_path / "folder.txt").mkdir()
    with pytest.raises(UnreadableFileError, match="not a regular file"):
        read_file(tmp_path / "folder.txt")
    # invalid UTF-8 and a byte Windows-1252 does not define either
    with pytest.raises(UnreadableFileError, match="re-save it as UTF-8") as info:
        read_file(write(tmp_path / "mixed.txt", b"ok \xff\x81 not ok"))
    assert info.value.code == "unreadable"


def test_error_codes_are_distinct_and_messages_name_the_file(tmp_path: Path) -> None:
    classes = [
        TooLargeError,
        BinaryFileError,
        EmptyDocumentError,
        UnsupportedFormatError,
        UnreadableFileError,
        BadRecordError,
    ]
    codes = [c.code for c in classes]
    assert sorted(codes) == sorted(
        ["too_large", "binary", "empty", "unsupported", "unreadable", "bad_record"]
    )
    assert all(issubclass(c, ReaderError) for c in classes)
    error = EmptyDocumentError(tmp_path / "x.txt", "do this")
    assert str(error) == f"{tmp_path / 'x.txt'}: do this"


# --- folders ------------------------------------------------------------------------


def test_walk_folder_is_sorted_and_skips_hidden(tmp_path: Path) -> None:
    for name in [
        "b.md",
        "A.txt",
        "sub/z.html",
        "sub/deeper/one.jsonl",
        "sub/image.png",
        "a.pdf",
        ".hidden.txt",
        ".git/config.json",
        "sub/.cache/x.txt",
        "Makefile",
    ]:
        write(tmp_path / name, "x")
    entries = list(walk_folder(tmp_path))
    assert [e.relative for e in entries] == [
        "A.txt",
        "Makefile",
        "a.pdf",
        "b.md",
        "sub/deeper/one.jsonl",
        "sub/image.png",
        "sub/z.html",
    ]
    unsupported = [e.relative for e in entries if not e.supported]
    assert unsupported == ["Makefile", "sub/image.png"]
    assert all(isinstance(e.error, UnsupportedFormatError) for e in entries if not e.supported)
    assert [e.format for e in entries if e.supported] == [
        "text",
        "pdf",
        "markdown",
        "jsonl",
        "html",
    ]
    assert entries[0].path == tmp_path / "A.txt"
    assert [(e.path, e.format) for e in walk_folder(tmp_path)] == [
        (e.path, e.format) for e in entries
    ]


def test_walk_folder_does_not_follow_folder_symlinks(tmp_path: Path) -> None:
    write(tmp_path / "docs" / "a.txt", "x")
    os.symlink(tmp_path / "docs", tmp_path / "loop")
    os.symlink(tmp_path / "docs" / "a.txt", tmp_path / "link.txt")
    os.symlink(tmp_path / "nowhere.txt", tmp_path / "broken.txt")
    entries = {e.relative: e for e in walk_folder(tmp_path)}
    assert set(entries) == {"docs/a.txt", "link.txt", "broken.txt", "loop"}
    assert entries["link.txt"].supported
    assert isinstance(entries["broken.txt"].error, UnreadableFileError)
    assert isinstance(entries["loop"].error, UnreadableFileError)


def test_walk_folder_needs_a_folder(tmp_path: Path) -> None:
    with pytest.raises(UnreadableFileError, match="not a folder"):
        list(walk_folder(tmp_path / "nope"))


def test_every_supported_suffix_reads(tmp_path: Path) -> None:
    samples = {
        "text": "plain",
        "markdown": "# md",
        "html": "<p>html</p>",
        "json": '{"text": "json"}',
        "jsonl": '{"text": "jsonl"}',
    }
    for suffix, fmt in SUPPORTED_SUFFIXES.items():
        path = tmp_path / f"s{suffix}"
        write(path, pdf_bytes(["pdf"]) if fmt == "pdf" else samples[fmt])
        assert read_file(path).documents[0].format == fmt
