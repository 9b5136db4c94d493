"""The router actor: providers, streamed tokens, cancellation, shared circuit breakers."""

from ._actor import Router

__all__ = ("Router",)
