"""The actors: each talks to the others only through subjects/ and runtime/.

``ACTORS`` names every actor ``ragbus up`` starts and ``ragbus actor NAME`` runs,
as import paths so that running one actor never imports the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runtime import Actor

__all__ = ("ACTORS", "load_actor")

ACTORS: dict[str, str] = {}


def load_actor(name: str) -> type[Actor]:
    try:
        path = ACTORS[name]
    except KeyError:
        known = ", ".join(sorted(ACTORS)) or "none yet"
        raise LookupError(f"no actor named {name!r}; known actors: {known}") from None
    module, _, attr = path.partition(":")
    cls: type[Actor] = getattr(importlib.import_module(module), attr)
    return cls
