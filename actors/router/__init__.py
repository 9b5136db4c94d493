"""The router actor: providers, streamed tokens, cancellation, shared circuit breakers.

Also exported: prompt rendering and the provider transports, so a benchmark can
send the same request on the same HTTP stack as the router.
"""

from ._actor import Router
from ._prompts import Prompts
from ._transports import Pool, provider_transports

__all__ = (
    "Pool",
    "Prompts",
    "Router",
    "provider_transports",
)
