"""Masking personal data and credentials in text that leaves the process for good.

Logs already mask credentials (``SecretMasker``); audit events are kept for a
year and read by third parties, so they also lose e-mail addresses, phone
numbers and the common shapes of API keys before they are published.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from .logs import SecretMasker

__all__ = ("EMAIL", "PHONE", "PiiMasker")

EMAIL = "<email>"
PHONE = "<phone>"

# bounded as RFC 5321 bounds an address (local part 64, labels 63): unbounded, a long run
# like "a.a.a.…" took time quadratic in its length
_EMAIL = re.compile(
    r"(?i)\b[a-z0-9._%+\-]{1,64}@[a-z0-9\-]{1,63}(?:\.[a-z0-9\-]{1,63}){0,8}\.[a-z]{2,24}\b")
# a leading +, a (area) code, or the 3-3-4 / 0-prefixed national shapes: dates, versions and
# plain counts do not match
_PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}[\s.\-]?(?:\(\d{1,4}\)[\s.\-]?)?\d{1,4}(?:[\s.\-]?\d{2,4}){1,4}"
    r"|\(\d{2,4}\)[\s.\-]?\d{3,4}[\s.\-]?\d{3,4}"
    r"|\d{3}[\s.\-]\d{3}[\s.\-]\d{4}"
    r"|0\d{2,4}[\s\-]\d{3,4}[\s\-]?\d{3,4}"
    r")(?![\w])"
)
# key shapes SecretMasker does not know: AWS access keys, GitHub, Slack and Google keys
_KEYS = re.compile(
    r"\b(?:AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,}|xox[abposr]-[A-Za-z0-9\-]{10,}"
    r"|AIza[0-9A-Za-z_\-]{35})\b"
)


# ids (request, trace, event ids) are hex: no credential or PII pattern can match one
_HEX_ID = re.compile(r"[0-9a-f]{1,64}")


class PiiMasker:
    """Credentials first (so a key containing digits is not half a phone), then PII."""

    def __init__(self, known_secrets: Iterable[str] = ()) -> None:
        self._secrets = SecretMasker()
        self._known: list[str] = []
        self.add(known_secrets)

    def add(self, values: Iterable[str]) -> None:
        values = list(values)
        self._secrets.add(values)
        self._known.extend(v for v in values if v and len(v) >= 4)

    def mask_text(self, value: str) -> str:
        if _HEX_ID.fullmatch(value) and not any(k in value for k in self._known):
            return value
        value = self._secrets.mask_text(value)
        value = _KEYS.sub("***", value)
        value = _EMAIL.sub(EMAIL, value)
        return _PHONE.sub(PHONE, value)

    def mask(self, value: Any, key: str = "") -> Any:
        """Mask a structure: strings under sensitive keys go, other strings are masked.

        Numbers stay (``tokens_used`` is a count, not a token).
        """
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, str):
            masked = self._secrets.mask(value, key)
            return self.mask_text(masked) if isinstance(masked, str) else masked
        if isinstance(value, Mapping):
            return {str(k): self.mask(v, str(k)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.mask(v) for v in value]
        return self._secrets.mask(value, key)
