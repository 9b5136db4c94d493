"""Settings of the trimmer (filled in by the issue that builds it)."""

from __future__ import annotations

from ._section import Section

__all__ = ("TrimmerSettings",)


class TrimmerSettings(Section, frozen=True, kw_only=True):
    pass
