"""The context-trimmer actor: token budgets, dedupe, contextual compression, memory."""

from ._actor import ContextTrimmer

__all__ = ("ContextTrimmer",)
