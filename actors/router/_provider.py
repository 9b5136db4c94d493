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
    """The chat messages for an LLM, and the raw parts for the extractive provider.

    ``numbers`` are the citation numbers of ``context``'s nodes when they are not
    1, 2, ... (a map call of ``tree_summarize`` sees one group of the nodes, cited as
    in the whole context); ``groups`` asks the extractive provider for the best
    sentences per group of ``context`` first, then the best of those (its own
    ``tree_summarize``).
    """

    messages: list[dict[str, str]]
    question: str
    context: list[ContextNode]
    max_tokens: int | None
    template: str
    numbers: tuple[int, ...] | None = None
    groups: tuple[tuple[int, ...], ...] | None = None

    def number(self, passage: int) -> int:
        """The citation number of the 1-based ``passage`` of ``context``."""
        return self.numbers[passage - 1] if self.numbers is not None else passage


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
