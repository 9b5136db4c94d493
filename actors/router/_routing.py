"""Which providers a request tries, in order: the routing mode, size and pins.

``local-first``: local LLMs, then cloud ones; ``cloud-only`` and ``local-only``:
one kind. A prompt over the local limit skips local LLMs (small local models
have small context windows; truncating silently would answer a different
question). A pinned provider is tried alone. Whatever the mode, the extractive
providers end the chain: they need no model and cannot be down; only a request that
asks for an LLM's answer (``Generate.llm_only``) goes without them.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from ._provider import Provider

__all__ = ("Plan", "plan")


@dataclass(slots=True)
class Plan:
    """Providers to try, in order, and the ones left out with the reason."""

    order: list[Provider] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.order]


def plan(providers: Sequence[Provider], *, mode: str, prompt_tokens: int, local_limit: int,
         pinned: str | None = None, unavailable: Collection[str] = (),
         llm_only: bool = False) -> Plan:
    """The chain for one request. ``unavailable`` names providers to leave out (not
    started, not answering); a pinned one of those leaves only the last resort.
    ``llm_only`` leaves the last resort out too: the chain may end up empty."""
    result = Plan()
    last_resort = [p for p in providers if not p.is_llm]
    llms = [p for p in providers if p.is_llm]
    if llm_only:
        result.skipped += [(p.name, "the request asks for an LLM's answer") for p in last_resort]
        providers = llms
        last_resort = []
    if pinned is not None:
        chosen = [p for p in providers if p.name == pinned and p.name not in unavailable]
        if not chosen:
            result.skipped.append((pinned, "not available"))
        result.order = chosen + [p for p in last_resort if p.name != pinned]
        result.skipped += [(p.name, "another provider was pinned")
                           for p in llms if p.name != pinned]
        return result
    local = [p for p in llms if p.settings.is_local]
    cloud = [p for p in llms if not p.settings.is_local]
    if mode == "cloud-only":
        candidates = cloud
        result.skipped += [(p.name, "local provider in cloud-only mode") for p in local]
    elif mode == "local-only":
        candidates = local
        result.skipped += [(p.name, "cloud provider in local-only mode") for p in cloud]
    else:
        candidates = local + cloud
    for p in candidates:
        if p.name in unavailable:
            result.skipped.append((p.name, "not available"))
        elif p.settings.is_local and prompt_tokens > local_limit:
            result.skipped.append(
                (p.name, f"prompt of {prompt_tokens} tokens is over the local limit "
                         f"of {local_limit}"))
        else:
            result.order.append(p)
    result.order += last_resort
    return result
