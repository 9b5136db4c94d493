"""The token budget of one prompt: who may use how much of the model's window.

The prompt is everything the model reads (question, memory, context); the
response budget is kept free for the answer. Memory is served before the
context because a follow-up question ("and the second one?") is meaningless
without it, and both are capped by their own settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from ragbus.config import TrimmerSettings

__all__ = ("Budget",)


@dataclass(frozen=True, slots=True)
class Budget:
    total: int
    response: int
    question: int
    context: int
    memory: int
    brief: int

    @classmethod
    def from_settings(cls, cfg: TrimmerSettings, provider: str | None = None) -> Budget:
        """The budget for a query, shrunk to the model's window when that is smaller.

        A pinned provider with a known window uses it; otherwise the smallest
        window the router may pick (``model_context_tokens``) applies.
        """
        window = cfg.provider_context_tokens.get(provider) if provider else None
        if window is None:
            window = cfg.model_context_tokens
        total = cfg.total_tokens if window is None else min(cfg.total_tokens, window)
        return cls(
            total=total,
            response=cfg.response_tokens,
            # a small window can hold less question than the setting allows
            question=min(cfg.question_tokens, total - cfg.response_tokens),
            context=cfg.context_tokens,
            memory=cfg.memory_tokens,
            brief=cfg.brief_tokens,
        )

    @property
    def prompt(self) -> int:
        """Tokens the prompt may use: the total less what the answer needs."""
        return max(0, self.total - self.response)

    def memory_for(self, question_tokens: int) -> int:
        """Room for conversation memory once the question is in."""
        return max(0, min(self.memory, self.prompt - question_tokens))

    def context_for(self, question_tokens: int, memory_tokens: int) -> int:
        """Room for retrieved context once the question and the memory are in."""
        return max(0, min(self.context, self.prompt - question_tokens - memory_tokens))
