"""Text tools the actors share: cl100k token counting and cutting, BM25 term weights,
sentence boundaries.

They hold no bus state and import nothing of the kernel; they live under ``runtime``
because more than one actor needs exactly the same answer (the ingestor's chunk
sizes and the trimmer's budgets; the ingestor's document weights and the
retriever's query weights).
"""

from ._bm25 import BM25Encoder, analyze, term_id
from ._sentences import sentence_spans, split_sentences
from ._tokens import (
    ENCODING_NAME,
    TokenizerUnavailableError,
    count_tokens,
    count_tokens_batch,
    decode,
    encode,
    encoding,
    split_spans,
    truncate,
)

__all__ = (
    "ENCODING_NAME",
    "BM25Encoder",
    "TokenizerUnavailableError",
    "analyze",
    "count_tokens",
    "count_tokens_batch",
    "decode",
    "encode",
    "encoding",
    "sentence_spans",
    "split_sentences",
    "split_spans",
    "term_id",
    "truncate",
)
