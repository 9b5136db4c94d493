"""Spotting a looping stream: the same run of words over and over at the end of the text.

Small local models loop ("It is not a correct answer." sixty times until
``max_tokens``). The guard reads the streamed text as word and punctuation
tokens (lower-cased) and keeps, for every period ``p`` up to ``max_period``, how
many tokens in a row equal the token ``p`` before them. A unit of ``p`` tokens
repeated ``k`` times in a row at the end of the text is exactly a run of at least
``p * (k - 1)`` such tokens, so each new token costs one comparison per period,
never a search. The stream is a loop when some unit is repeated ``min_repeats``
times and the repeats span ``min_tokens`` tokens: a single word said twenty times
loops, "no, no, no, no" does not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ("Loop", "RepetitionGuard")

# a word, or one character that is neither a word character nor a space
_TOKEN = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True, slots=True)
class Loop:
    """A loop found: its unit's length in tokens, how often it was said in a row, and
    the offset in the text where its second saying begins (the text up to there says
    everything the loop does)."""

    period: int
    repeats: int
    cut: int


class RepetitionGuard:
    """Feed it the stream's text as it comes; :meth:`feed` returns the loop once found."""

    __slots__ = ("_ends", "_offset", "_pending", "_runs", "_tokens", "loop", "max_period",
                 "min_repeats", "min_tokens")

    def __init__(self, *, min_repeats: int, min_tokens: int, max_period: int) -> None:
        if min_repeats < 2 or min_tokens < 1 or max_period < 1:
            raise ValueError("a loop needs min_repeats >= 2, min_tokens >= 1 and "
                             "max_period >= 1")
        self.min_repeats = min_repeats
        self.min_tokens = min_tokens
        self.max_period = max_period
        self._tokens: list[str] = []
        self._ends: list[int] = []  # each token's end offset in the text
        self._runs = [0] * (max_period + 1)  # index p: tokens in a row equal to p back
        self._pending = ""  # text after the last complete token
        self._offset = 0  # text offset where _pending starts
        self.loop: Loop | None = None

    def feed(self, text: str) -> Loop | None:
        """Take the next piece of the stream; the loop when this piece completed one."""
        if self.loop is not None:
            return self.loop
        buffer = self._pending + text
        consumed = 0
        for match in _TOKEN.finditer(buffer):
            if match.end() == len(buffer) and buffer[-1].isalnum():
                break  # a word that the next piece may continue
            consumed = match.end()
            if self._add(match.group().lower(), self._offset + consumed):
                break
        self._offset += consumed
        self._pending = buffer[consumed:]
        return self.loop

    def _add(self, token: str, end: int) -> bool:
        tokens, runs = self._tokens, self._runs
        n = len(tokens)
        tokens.append(token)
        self._ends.append(end)
        need = self.min_repeats - 1
        for p in range(1, min(self.max_period, n) + 1):
            if tokens[n - p] != token:
                runs[p] = 0
                continue
            run = runs[p] = runs[p] + 1
            if run >= p * need and run + p >= self.min_tokens:
                repeats = run // p + 1
                start = n + 1 - run - p  # the index of the unit's first token
                cut = self._ends[start + p - 1]  # the end of its first saying
                self.loop = Loop(period=p, repeats=repeats, cut=cut)
                return True
        return False
