"""Settings of the router (filled in by the issue that builds it)."""

from __future__ import annotations

from ._section import Section

__all__ = ("RouterSettings",)


class RouterSettings(Section, frozen=True, kw_only=True):
    pass
