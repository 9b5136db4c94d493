"""HTML to chunkable text with the standard library's parser.

Block elements become blank-line paragraph breaks, because paragraphs are the
chunker's first cut points; ``<h1>``..``<h6>`` become ``#`` headings so the
chunker's Markdown mode turns them into sections and parents follow the page's
structure, and ``<pre>`` becomes a fenced block so its blank lines do not split
it. List items and table rows become lines of one paragraph. Script, style and
other non-content elements are dropped, and so are permalink anchors (Sphinx's and
MkDocs' ``<a class="headerlink">¶</a>``, hidden ``aria-hidden`` anchors): a heading
would otherwise end in a "¶" in every chunk and every answer.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

__all__ = ("HtmlText", "extract_html")

_SKIP = frozenset({"script", "style", "noscript", "template", "svg", "math", "iframe", "object"})
_BLOCK = frozenset(
    {
        "address", "article", "aside", "blockquote", "body", "caption", "dd", "details",
        "dialog", "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form",
        "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "html", "main", "nav",
        "ol", "p", "pre", "section", "summary", "table", "tbody", "tfoot", "thead", "ul",
    }
)  # fmt: skip
_LINE_BREAK = frozenset({"br", "tr"})
_CELL = frozenset({"td", "th"})
_HEADING = {f"h{n}": n for n in range(1, 7)}
_SPACES = re.compile(r"[^\S\n]+")
#: classes of the anchors documentation generators put beside headings, to link to them
_PERMALINK_CLASSES = frozenset({"headerlink", "anchor", "anchor-link", "anchorjs-link",
                                "permalink", "header-anchor"})


def _permalink(attrs: list[tuple[str, str | None]]) -> bool:
    found = dict(attrs)
    classes = set((found.get("class") or "").split())
    return bool(classes & _PERMALINK_CLASSES) or found.get("aria-hidden") == "true"


class HtmlText:
    """The extracted ``title`` (empty if none) and ``text`` of a page."""

    __slots__ = ("text", "title")

    def __init__(self, title: str, text: str) -> None:
        self.title = title
        self.text = text


def extract_html(html: str) -> HtmlText:
    parser = _Extractor()
    parser.feed(html)
    parser.close()
    return parser.result()


class _Extractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._paragraphs: list[str] = []
        self._buffer: list[str] = []
        self._skip_depth = 0
        self._pre_depth = 0
        self._heading = 0
        self._in_title = False
        self._title: list[str] = []
        self._first_h1: str | None = None
        self._skipped_anchors = 0  # open <a> elements being dropped

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a" and (self._skipped_anchors or _permalink(attrs)):
            self._skipped_anchors += 1
            self._skip_depth += 1
        elif tag in _SKIP:
            self._skip_depth += 1
        elif tag == "title":
            self._in_title = True
        elif tag in _BLOCK:
            self._flush()
            if tag in _HEADING:
                self._heading = _HEADING[tag]
            elif tag == "pre":
                self._pre_depth += 1
        elif tag == "li":
            # items stay in one paragraph (the list's), one per line
            self._buffer.append("\n- ")
        elif tag in _LINE_BREAK:
            self._buffer.append("\n")
        elif tag in _CELL:
            self._buffer.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._skipped_anchors:
            self._skipped_anchors -= 1
            self._skip_depth = max(0, self._skip_depth - 1)
        elif tag in _SKIP:
            self._skip_depth = max(0, self._skip_depth - 1)
        elif tag == "title":
            self._in_title = False
        elif tag in _BLOCK:
            self._flush()
            if tag == "pre":
                self._pre_depth = max(0, self._pre_depth - 1)

    def handle_data(self, data: str) -> None:
        if self._skip_depth:
            return
        if self._in_title:
            self._title.append(data)
        elif self._pre_depth:
            self._buffer.append(data)
        else:
            self._buffer.append(_SPACES.sub(" ", data.replace("\n", " ")))

    def _flush(self) -> None:
        raw = "".join(self._buffer)
        self._buffer = []
        if self._pre_depth:
            # fenced, so the chunker keeps blank lines inside it and cuts it at lines
            code = raw.strip("\n").rstrip()
            text = f"```\n{code}\n```" if code else ""
        else:
            text = "\n".join(line.strip() for line in raw.split("\n") if line.strip())
        if text:
            if self._heading:
                text = " ".join(text.split())
                if self._heading == 1 and self._first_h1 is None:
                    self._first_h1 = text
                text = "#" * self._heading + " " + text
            self._paragraphs.append(text)
        self._heading = 0

    def result(self) -> HtmlText:
        self._flush()
        title = " ".join("".join(self._title).split()) or self._first_h1 or ""
        return HtmlText(title, "\n\n".join(self._paragraphs))
