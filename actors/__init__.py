"""The actors: each talks to the others only through subjects/ and runtime/.

``ACTORS`` names every actor ``ragbus up`` starts and ``ragbus actor NAME`` runs,
as import paths so that running one actor never imports the others.
"""

from __future__ import annotations

import importlib
import os

# onnxruntime phones home unless told not to at import, and qdrant-client imports it
# (through fastembed) before the embedder could say so: every actor import passes here
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ragbus.runtime import Actor

__all__ = ("ACTORS", "load_actor")

ACTORS: dict[str, str] = {
    "audit-logger": "ragbus.actors.audit:AuditLogger",
    "embedder": "ragbus.actors.embedder:Embedder",
    "ingestor": "ragbus.actors.ingestor:Ingestor",
    "retriever": "ragbus.actors.retriever:Retriever",
    "context-trimmer": "ragbus.actors.trimmer:ContextTrimmer",
    "router": "ragbus.actors.router:Router",
    "bridge": "ragbus.actors.bridge:Bridge",
}


def load_actor(name: str) -> type[Actor]:
    try:
        path = ACTORS[name]
    except KeyError:
        known = ", ".join(sorted(ACTORS)) or "none yet"
        raise LookupError(f"no actor named {name!r}; known actors: {known}") from None
    module, _, attr = path.partition(":")
    cls: type[Actor] = getattr(importlib.import_module(module), attr)
    return cls
