"""structlog set-up: JSON (console on a TTY), context from the message, secrets masked.

Masking is a processor at the end of the chain, so nothing reaches a sink
unmasked, whichever logger or library produced the event.
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

__all__ = ("SecretMasker", "configure_logging", "get_logger")

_SENSITIVE_KEY = re.compile(
    r"(pass(word|wd)?|secret|token|api[_-]?key|authorization|credential|creds|nkey|seed|jwt)",
    re.IGNORECASE,
)
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{6,}"), rf"\1 {MASK}"),
    (re.compile(r"\beyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]*"), MASK),
    (re.compile(r"\b(sk|gsk|pk|rk)-[A-Za-z0-9_\-]{12,}"), MASK),
    (re.compile(r"\bS[UAO][A-Z2-7]{56}\b"), MASK),  # NATS nkey seeds
    (re.compile(r"(?i)([a-z][a-z0-9+.\-]*://[^:/\s@]+:)[^@\s/]+@"), rf"\1{MASK}@"),
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
        if key and _SENSITIVE_KEY.search(key) and value not in (None, "", [], {}):
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
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *_format_exc_then_mask(_masker),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[settings.level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    return _masker


def get_logger(**initial: Any) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(**initial)
    return logger
