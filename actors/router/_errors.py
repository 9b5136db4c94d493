"""Why a provider could not answer; each class decides what the router does next.

Before the first token any :class:`ProviderError` sends the request to the next
provider. After it, the failure is wrapped in :class:`MidStreamError` and ends
the stream (no silent restart: the client has already shown part of an answer).
"""

from __future__ import annotations

__all__ = (
    "MidStreamError",
    "NothingToExtractError",
    "ProviderAuthError",
    "ProviderConnectError",
    "ProviderError",
    "ProviderOutOfMemoryError",
    "ProviderProtocolError",
    "ProviderRateLimitedError",
    "ProviderRejectedError",
    "ProviderServerError",
    "ProviderTimeoutError",
)


class ProviderError(Exception):
    """A provider failed to answer; ``counts`` says whether it counts against its breaker."""

    reason = "error"
    counts = True

    def __init__(self, provider: str, message: str) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.message = message


class ProviderConnectError(ProviderError):
    """Nothing accepted the connection (refused, unreachable, DNS): check base_url."""

    reason = "connect"


class ProviderTimeoutError(ProviderError):
    """No first token, no next token, or no end within the provider's timeouts."""

    reason = "timeout"


class ProviderRateLimitedError(ProviderError):
    """HTTP 429: the breaker opens for ``retry_after_s`` (or the configured cooldown)."""

    reason = "rate_limited"

    def __init__(self, provider: str, message: str, retry_after_s: float | None) -> None:
        super().__init__(provider, message)
        self.retry_after_s = retry_after_s


class ProviderAuthError(ProviderError):
    """HTTP 401/403: the API key is missing, wrong or lacks access to the model."""

    reason = "auth"


class ProviderOutOfMemoryError(ProviderError):
    """The server ran out of (GPU) memory: a smaller prompt or another provider may work."""

    reason = "out_of_memory"


class ProviderServerError(ProviderError):
    """HTTP 5xx or an error event in the stream."""

    reason = "server_error"


class ProviderRejectedError(ProviderError):
    """HTTP 4xx about this request (e.g. the prompt is too long): not the provider's health."""

    reason = "rejected"
    counts = False


class ProviderProtocolError(ProviderError):
    """The response is not an OpenAI chat-completions stream: check base_url."""

    reason = "protocol"


class NothingToExtractError(ProviderError):
    """The extractive provider found no context sentence to answer with."""

    reason = "no_context"
    counts = False


class MidStreamError(Exception):
    """A provider failed after tokens had been sent; the stream ends with ``Failed``."""

    def __init__(self, cause: ProviderError) -> None:
        super().__init__(str(cause))
        self.cause = cause
