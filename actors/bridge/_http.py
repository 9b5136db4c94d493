"""Plain HTTP on the WebSocket port: the page, its two assets, ``/healthz``, ``/readyz``.

The files are read once at start (they are small and fixed); responses carry a
strict Content-Security-Policy (no inline script, nothing from elsewhere) and no
Referer, since a browser may carry ``?token=`` in the page's address.
"""

from __future__ import annotations

import email.utils
import http
from dataclasses import dataclass
from importlib import resources

from websockets.datastructures import Headers
from websockets.http11 import Response

__all__ = ("STATIC_FILES", "Page", "load_pages", "response")

STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}

_SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; "
                                "connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
                                "form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True, slots=True)
class Page:
    body: bytes
    content_type: str


def load_pages() -> dict[str, Page]:
    """The static files by path, read from the package (works installed or editable)."""
    root = resources.files("ragbus.actors.bridge") / "static"
    return {path: Page(root.joinpath(name).read_bytes(), ctype)
            for path, (name, ctype) in STATIC_FILES.items()}


def response(status: http.HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers()
    headers["Date"] = email.utils.formatdate(usegmt=True)
    headers["Connection"] = "close"
    headers["Content-Length"] = str(len(body))
    headers["Content-Type"] = content_type
    for name, value in _SECURITY_HEADERS.items():
        headers[name] = value
    return Response(status.value, status.phrase, headers, body)
