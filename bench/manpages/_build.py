"""Build a BEIR-layout known-item set from Debian's ``manpages`` and ``manpages-dev``.

Each page's NAME line ("malloc, free, calloc - allocate and free dynamic memory")
gives the question (the description after the dash); the rest of the page, rendered
to plain text by ``man``, is the document that answers it. The NAME section is
removed from the document so the task is not string matching against it; the page
header and footer (which repeat the page name) are dropped too. See README.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragbus.runtime.text import count_tokens

__all__ = ("DEFAULT_OUT", "PACKAGES", "Page", "build", "install", "parse_page", "render")

#: The Debian packages read, in this order; pages are taken from their file lists.
PACKAGES = ("manpages", "manpages-dev")
DEFAULT_OUT = Path.home() / ".cache" / "ragbus-bench" / "manpages"
#: A page's document must be at least this long (cl100k tokens) to count as "long"
#: (several 200-token chunks), and at most this long: proc(5) alone (~35k tokens)
#: would otherwise be a twentieth of the corpus and most of its embedding time.
MIN_TOKENS = 500
MAX_TOKENS = 12_000
#: Questions kept: the first QUESTIONS pages in the order of sha256(page id), among
#: those whose description names only them (no other page has the same one).
QUESTIONS = 300
#: Rendering width: wide enough that few sentences are broken across lines.
_WIDTH = "100"
_HEADING = re.compile(r"^[A-Z][A-Z0-9 ,/()_-]*$")
_NAME_DASH = re.compile(r"\s+\\?-+\s+")


@dataclass(frozen=True, slots=True)
class Page:
    page_id: str  # "malloc.3"
    title: str  # "malloc(3)"
    names: tuple[str, ...]  # every name on the NAME line
    description: str  # the NAME line after its dash: the question
    body: str  # every section but NAME, headings kept, indentation removed


def install() -> None:
    """``apt-get install`` the packages (root; on a machine without them)."""
    subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES],
                   check=True)


def package_version(package: str) -> str:
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"Debian package {package} is not installed: "
                         f"apt-get install {' '.join(PACKAGES)} (or pass --install)")
    return out.stdout.strip()


def page_files(package: str) -> list[Path]:
    """The package's English man pages that are pages, not aliases.

    Aliases are symlinks (``calloc.3.gz -> malloc.3.gz``) or one-line ``.so``
    redirects; they would be the same document under another name.
    """
    listed = subprocess.run(["dpkg-query", "-L", package], capture_output=True, text=True,
                            check=True).stdout.splitlines()
    files = []
    for line in listed:
        path = Path(line)
        if not re.fullmatch(r"/usr/share/man/man\d/[^/]+\.gz", line):
            continue
        if path.is_symlink() or not path.is_file():
            continue
        files.append(path)
    return sorted(files)


def render(path: Path) -> str:
    """The page as ``man`` shows it, without hyphenation, justification or formatting."""
    env = {**os.environ, "MANWIDTH": _WIDTH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    env.pop("MAN_KEEP_FORMATTING", None)
    out = subprocess.run(["man", "-l", "--nh", "--nj", "-E", "UTF-8", str(path)],
                         capture_output=True, text=True, env=env, check=False)
    return out.stdout


def _is_redirect(path: Path) -> bool:
    import gzip

    with gzip.open(path, "rt", errors="replace") as f:
        for line in f:
            if line.startswith(('.\\"', "'\\\"")) or not line.strip():
                continue
            return line.startswith(".so ")
    return True


def parse_page(page_id: str, title: str, rendered: str) -> Page | None:
    """Split a rendered page into its NAME line and the rest; None if it has no NAME."""
    lines = rendered.rstrip("\n").split("\n")
    if len(lines) < 3:
        return None
    lines = lines[1:-1]  # header and footer both repeat the page name
    sections: list[tuple[str, list[str]]] = []
    for line in lines:
        if line and not line[0].isspace() and _HEADING.match(line.strip()):
            sections.append((line.strip(), []))
        elif sections:
            sections[-1][1].append(line[7:] if line.startswith(" " * 7) else line.lstrip())
    name = next((body for heading, body in sections if heading == "NAME"), None)
    if not name:
        return None
    name_line = " ".join(" ".join(name).split())
    parts = _NAME_DASH.split(name_line, maxsplit=1)
    if len(parts) != 2 or not parts[1].strip():
        return None
    names = tuple(n.strip() for n in parts[0].split(",") if n.strip())
    out: list[str] = []
    for heading, body in sections:
        if heading == "NAME":
            continue
        out.append(heading)
        out.extend(body)
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(line.rstrip() for line in out)).strip()
    return Page(page_id=page_id, title=title, names=names, description=parts[1].strip(),
                body=text)


def _load(path: Path) -> Page | None:
    if _is_redirect(path):
        return None
    stem = path.name.removesuffix(".gz")  # "malloc.3"
    name, _, section = stem.rpartition(".")
    return parse_page(stem, f"{name}({section})", render(path))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(out: Path) -> dict[str, Any]:
    """Write corpus.jsonl, queries.jsonl, qrels/test.tsv and manifest.json under ``out``."""
    versions = {p: package_version(p) for p in PACKAGES}
    files = {f: p for p in PACKAGES for f in page_files(p)}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        pages = [page for page in pool.map(_load, sorted(files)) if page is not None]
    by_id = {page.page_id: page for page in pages}  # the same page in two packages: once
    tokens = {pid: count_tokens(page.body) for pid, page in by_id.items()}
    kept = sorted(pid for pid in by_id if MIN_TOKENS <= tokens[pid] <= MAX_TOKENS)
    seen = Counter(" ".join(by_id[pid].description.lower().split()) for pid in kept)
    unique = [pid for pid in kept
              if seen[" ".join(by_id[pid].description.lower().split())] == 1]
    asked = sorted(unique, key=lambda pid: hashlib.sha256(pid.encode()).hexdigest())[:QUESTIONS]
    asked.sort()
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    with (out / "corpus.jsonl").open("w") as f:
        for pid in kept:
            page = by_id[pid]
            f.write(json.dumps({"_id": pid, "title": page.title, "text": page.body,
                                "metadata": {"names": list(page.names)}}) + "\n")
    with (out / "queries.jsonl").open("w") as f:
        for pid in asked:
            f.write(json.dumps({"_id": pid, "text": by_id[pid].description}) + "\n")
    with (out / "qrels" / "test.tsv").open("w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for pid in asked:
            f.write(f"{pid}\t{pid}\t1\n")
    doc_tokens = sorted(tokens[pid] for pid in kept)
    manifest = {
        "packages": versions,
        "pages_read": len(by_id),
        "documents": len(kept),
        "queries": len(asked),
        "questions_possible": len(unique),
        "doc_tokens_median": doc_tokens[len(doc_tokens) // 2] if doc_tokens else 0,
        "doc_tokens_total": sum(doc_tokens),
        "sha256": {name: _sha(out / name) for name in
                   ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv")},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return {"out": str(out), **{k: v for k, v in manifest.items() if k != "sha256"}}
