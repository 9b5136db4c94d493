"""structlog set-up: JSON (console on a TTY), context from the message, secrets masked.

Masking is a processor at the end of the chain, so nothing reaches a sink
unmasked, whichever logger or library produced the event: the standard
``logging`` records of nats-py, aiohttp, httpx, qdrant-client and onnxruntime go
through the same processors (``structlog.stdlib.ProcessorFormatter`` on the root
logger), so they are masked and rendered like ragbus's own lines.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from ragbus.config import MASK, LoggingSettings, Secret

__all__ = ("SECRET_KEYS", "SecretMasker", "configure_logging", "get_logger", "secret_key")

#: keys whose value is a credential, whatever it looks like (compared lower-cased, "-" as "_")
SECRET_KEYS = frozenset({
    "password", "passwd", "pass", "secret", "token", "api_key", "apikey", "x_api_key",
    "authorization", "proxy_authorization", "cookie", "set_cookie", "credential",
    "credentials", "creds", "nkey", "seed", "jwt", "bearer", "access_key", "private_key",
    "client_secret", "access_token", "refresh_token", "id_token", "auth_token",
    "session_token", "hash_key", "jwt_secret", "api_keys",
})
#: a name ending like one of these holds a credential too (``admin_password``), unless its
#: value is a number: ``first_token_ms``, ``tokens_used`` and ``prompt_tokens`` are figures
_SECRET_SUFFIXES = ("_password", "_passwd", "_secret", "_token", "_api_key", "_apikey",
                    "_key_secret", "_credentials", "_seed", "_nkey")


def secret_key(key: str, value: Any = None) -> bool:
    """Whether ``key`` names a credential (a number under a suffix-only match is a figure)."""
    name = key.lower().replace("-", "_")
    if name in SECRET_KEYS:
        return True
    return name.endswith(_SECRET_SUFFIXES) and not isinstance(value, int | float)
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{6,}"), rf"\1 {MASK}"),
    (re.compile(r"\beyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]*"), MASK),
    (re.compile(r"\b(sk|gsk|pk|rk)-[A-Za-z0-9_\-]{12,}"), MASK),
    (re.compile(r"\bS[UAO][A-Z2-7]{56}\b"), MASK),  # NATS nkey seeds
    # every repeat bounded (a scheme, a user and a password are short): unbounded, a long
    # run of letters (a huge question, a fuzzed field) took time quadratic in its length
    (re.compile(r"(?i)([a-z][a-z0-9+.\-]{0,31}://[^:/\s@]{1,256}:)[^@\s/]{1,256}@"),
     rf"\1{MASK}@"),
    (re.compile(
        r"(?i)\b((?:api[_-]?key|token|password|passwd|secret|access[_-]?key)\s*[=:]\s*)"
        r"(\"[^\"]*\"|'[^']*'|[^\s,;&]+)"
    ), rf"\1{MASK}"),
)


class SecretMasker:
    """Replaces known secret values and anything that looks like a credential."""

    def __init__(self, known: Iterable[str] = ()) -> None:
        self._known: list[str] = []
        self.add(known)

    def add(self, values: Iterable[str]) -> None:
        for value in values:
            if value and len(value) >= 4 and value not in self._known:
                self._known.append(value)
        self._known.sort(key=len, reverse=True)  # longest first: no partial leaks

    def mask_text(self, text: str) -> str:
        for value in self._known:
            if value in text:
                text = text.replace(value, MASK)
        for pattern, repl in _PATTERNS:
            text = pattern.sub(repl, text)
        return text

    def mask(self, value: Any, key: str = "") -> Any:
        if isinstance(value, Secret):
            return MASK
        if key and value not in (None, "", [], {}) and secret_key(key, value):
            return MASK
        if isinstance(value, str):
            return self.mask_text(value)
        if isinstance(value, MutableMapping):
            return {k: self.mask(v, str(k)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.mask(v) for v in value]
        if isinstance(value, BaseException):
            return self.mask_text(repr(value))
        return value

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
        return {k: self.mask(v, k) for k, v in event_dict.items()}


_masker = SecretMasker()


def _format_exc_then_mask(masker: SecretMasker) -> list[Processor]:
    # tracebacks are rendered to text first, so the masker sees their strings too
    return [structlog.processors.format_exc_info, masker]


def configure_logging(
    settings: LoggingSettings | None = None,
    *,
    secrets: Iterable[Secret | str] = (),
    stream: TextIO | None = None,
) -> SecretMasker:
    """Configure structlog globally; returns the masker so callers may add secrets later."""
    settings = settings or LoggingSettings()
    out = stream or sys.stderr
    _masker.add(s.get() if isinstance(s, Secret) else s for s in secrets)
    fmt = settings.format
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    renderer: Processor = (
        structlog.dev.ConsoleRenderer(colors=out.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    level = logging.getLevelNamesMapping()[settings.level.upper()]
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, *_format_exc_then_mask(_masker), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    _route_stdlib(out, level, shared, renderer)
    return _masker


def _route_stdlib(out: TextIO, level: int, shared: list[Processor],
                  renderer: Processor) -> None:
    """Send the standard ``logging`` records (the libraries') through the same chain."""
    handler = logging.StreamHandler(out)
    handler.set_name("ragbus")
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name,
                           structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    *_format_exc_then_mask(_masker), renderer],
    ))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "ragbus"]:
        root.removeHandler(old)
    root.addHandler(handler)
    # libraries say a lot at debug; ragbus's own debug lines are what debug is for
    root.setLevel(max(level, logging.INFO))


def get_logger(**initial: Any) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(**initial)
    return logger
