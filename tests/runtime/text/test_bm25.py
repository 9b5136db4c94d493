"""BM25 sparse vectors: analysis and weights agree between documents and queries."""

from __future__ import annotations

import subprocess
import sys

from ragbus.runtime.text import BM25Encoder, analyze, term_id


def test_analysis_lowercases_drops_stop_words_and_stems() -> None:
    assert analyze("The Cells' mutations were CAUSING the populations to die") == [
        "cell", "mutat", "were", "caus", "popul", "die"]
    assert analyze("otter's") == analyze("otters") == analyze("Otter")


def test_term_ids_are_stable_across_processes() -> None:
    # Python's own hash is salted per process: a stored index would stop matching queries
    code = "from ragbus.runtime.text import term_id; print(term_id('mutat'))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout.strip()
    assert int(other) == term_id("mutat")
    assert 0 <= term_id("mutat") < 2**31


def test_document_weights_saturate_with_frequency_and_shrink_with_length() -> None:
    enc = BM25Encoder(k1=0.9, b=0.4, avg_len=10)
    once = enc.document("otter").values[0]
    thrice = enc.document("otter otter otter").values[0]
    assert once < thrice < 3 * once  # more occurrences count, with diminishing returns
    assert thrice < enc.k1 + 1  # the saturation ceiling
    short = enc.document("otter rock").values[0]
    long = enc.document("otter " + " ".join(f"word{i}" for i in range(40))).values[0]
    assert long < short  # a match in a long chunk is weaker evidence


def test_query_weights_are_one_per_distinct_term_and_ids_match_documents() -> None:
    enc = BM25Encoder()
    query = enc.query("Otters otters and rocks")
    doc = enc.document("an otter with a rock")
    assert query.values == [1.0, 1.0]
    assert query.indices == sorted(query.indices)
    assert set(query.indices) == set(doc.indices)
