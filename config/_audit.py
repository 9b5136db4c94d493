"""Settings of the audit (filled in by the issue that builds it)."""

from __future__ import annotations

from ._section import Section

__all__ = ("AuditSettings",)


class AuditSettings(Section, frozen=True, kw_only=True):
    pass
