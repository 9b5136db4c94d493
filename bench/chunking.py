"""The chunker alone: how fast documents become chunks, before any embedding.

Measured here rather than in a test (a rate cannot fail a test honestly on a shared
machine). Reads the first N BEIR SciFact documents (title and abstract, as the
ingestor's records reader joins them), chunks each with the default settings, and
prints one JSON object.

    python -m bench.chunking [--docs N]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench._data import SCIFACT
from bench._stats import dumps
from ragbus.actors.ingestor import chunk_text, read_file


def run(n_docs: int) -> dict[str, Any]:
    documents = read_file(SCIFACT / "corpus.jsonl").documents[:n_docs]
    chunk_text(documents[0].text)  # the tokenizer loads outside the timing
    started = time.perf_counter()
    chunks = sum(len(chunk_text(d.text, markdown=d.markdown).chunks) for d in documents)
    elapsed = time.perf_counter() - started
    return {"docs": len(documents), "chunks": chunks, "seconds": round(elapsed, 3),
            "chunks_per_s": round(chunks / elapsed), "docs_per_s": round(len(documents) / elapsed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, default=1000)
    print(dumps(run(parser.parse_args().docs)))


if __name__ == "__main__":
    main()
