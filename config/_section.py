"""The base of every settings section, and the constrained types they share."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

__all__ = ("NonNegative", "Port", "Positive", "PositiveInt", "Section")

Positive = Annotated[float, Meta(gt=0)]
NonNegative = Annotated[float, Meta(ge=0)]
PositiveInt = Annotated[int, Meta(ge=1)]
Port = Annotated[int, Meta(ge=0, le=65535)]


class Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Unknown keys are errors: a typo must not be a silently ignored setting."""
