"""What every provider offers the router: a stream of text for a prompt.

A provider's ``stream`` is an async generator. The router wraps it in
``contextlib.aclosing`` so that leaving the loop for any reason (done, failure,
cancel, deadline) runs the generator's ``finally`` at once, which is where an HTTP
provider closes its connection: the model stops generating when the client stops.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Protocol

from ragbus.config import ProviderSettings
from ragbus.subjects import ContextNode

__all__ = ("Prompt", "Provider", "Usage")


@dataclass(frozen=True, slots=True)
class Prompt:
    """The chat messages for an LLM, and the raw parts for the extractive provider."""

    messages: list[dict[str, str]]
    question: str
    context: list[ContextNode]
    max_tokens: int | None
    template: str


@dataclass(slots=True)
class Usage:
    """Token counts as the provider reported them (or as counted while streaming)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    deltas: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, int]:
        completion = self.completion_tokens or self.deltas
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion, **self.extra}


class Provider(Protocol):
    name: str
    settings: ProviderSettings

    @property
    def model(self) -> str: ...

    @property
    def is_llm(self) -> bool:
        """False for the extractive provider: size-based routing does not apply to it."""
        ...

    def stream(self, prompt: Prompt, usage: Usage, *,
               first_token_timeout_s: float) -> AsyncGenerator[str, None]:
        """Text deltas of the answer. Raises a ``ProviderError`` when it cannot go on;
        updates ``usage`` as it goes (``deltas`` per delta, totals when reported)."""
        ...

    async def aclose(self) -> None: ...
