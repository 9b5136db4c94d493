"""The context-trimmer actor: token budgets, dedupe, contextual compression, memory.

Also exported: the budget and the trimming steps the actor runs, as plain functions.
"""

from ._actor import ContextTrimmer
from ._budget import Budget
from ._compress import compress, lexical_scores, sentences
from ._trim import dedupe, fit, from_sources, shortlist

__all__ = (
    "Budget",
    "ContextTrimmer",
    "compress",
    "dedupe",
    "fit",
    "from_sources",
    "lexical_scores",
    "sentences",
    "shortlist",
)
