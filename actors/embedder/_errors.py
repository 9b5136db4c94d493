"""Why an embedding model could not be loaded; every message says what to do about it."""

from __future__ import annotations

__all__ = (
    "ModelFilesError",
    "ModelLoadError",
    "ModelUnavailableError",
    "UnknownModelError",
)


class ModelLoadError(Exception):
    """The configured model cannot be loaded: the embedder must not start without it."""


class UnknownModelError(ModelLoadError):
    """The spec is neither the bundled model, a fastembed model name nor an existing directory."""


class ModelFilesError(ModelLoadError):
    """A model directory (a configured one, or the bundled files) is missing or incomplete."""


class ModelUnavailableError(ModelLoadError):
    """A fastembed model is not in the cache and cannot be downloaded (offline or no network)."""
