"""Spotting a looping stream: the same run of words over and over at the end of the text.

Small local models loop ("It is not a correct answer." sixty times until
``max_tokens``). The guard reads the streamed text as tokens, lower-cased: words,
and runs of one punctuation character ("---" is one token). For every period ``p``
up to ``max_period`` it keeps how many tokens in a row equal the token ``p`` before
them; a unit of ``p`` tokens said ``k`` times in a row at the end of the text is
exactly such a run of at least ``p * (k - 1)``. Each new token only touches the
periods at which the same token occurred before (where it was seen within the last
``max_period`` tokens), so the cost per token is small and does not grow with
``max_period``. The stream is a loop when a unit holding at least one word is said
``min_repeats`` times in a row over ``min_tokens`` tokens: a word said twenty-four
times loops; "no, no, no, no" and a markdown table's ``|---|---|---|`` do not.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

__all__ = ("Loop", "RepetitionGuard")

# a word, or a run of one character that is neither a word character nor a space
_TOKEN = re.compile(r"\w+|([^\w\s])\1*")


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

    __slots__ = ("_ends", "_last", "_offset", "_pending", "_runs", "_seen", "_tokens", "loop",
                 "max_period", "min_repeats", "min_tokens")

    def __init__(self, *, min_repeats: int, min_tokens: int, max_period: int) -> None:
        if min_repeats < 2 or min_tokens < 1 or max_period < 1:
            raise ValueError("a loop needs min_repeats >= 2, min_tokens >= 1 and "
                             "max_period >= 1")
        self.min_repeats = min_repeats
        self.min_tokens = min_tokens
        self.max_period = max_period
        self._tokens: list[str] = []
        self._ends: list[int] = []  # each token's end offset in the text
        self._seen: dict[str, deque[int]] = {}  # token -> where it was, the last max_period
        self._runs: dict[int, int] = {}  # period -> tokens in a row equal to the one p back
        self._last: dict[int, int] = {}  # period -> the index its run ends at
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
            if match.end() == len(buffer):
                break  # a word (or a run of dashes) that the next piece may continue
            consumed = match.end()
            if self._add(match.group().lower(), self._offset + consumed):
                break
        self._offset += consumed
        self._pending = buffer[consumed:]
        return self.loop

    def _add(self, token: str, end: int) -> bool:
        tokens, runs, last = self._tokens, self._runs, self._last
        n = len(tokens)
        tokens.append(token)
        self._ends.append(end)
        seen = self._seen.setdefault(token, deque())
        while seen and n - seen[0] > self.max_period:
            seen.popleft()
        need = self.min_repeats - 1
        found: Loop | None = None
        for before in reversed(seen):  # the nearest first: the shortest unit wins
            p = n - before
            run = runs[p] = runs[p] + 1 if last.get(p) == n - 1 else 1
            last[p] = n
            if found is None and run >= p * need and run + p >= self.min_tokens \
                    and any(_is_word(t) for t in tokens[n - p + 1:n + 1]):
                repeats = run // p + 1
                start = n + 1 - run - p  # the index of the unit's first token
                found = Loop(period=p, repeats=repeats, cut=self._ends[start + p - 1])
        seen.append(n)
        if found is not None:
            self.loop = found
            return True
        return False


def _is_word(token: str) -> bool:
    return token[0].isalnum() or token[0] == "_"
