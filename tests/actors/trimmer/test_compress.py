"""Sentence selection for contextual compression, given the scores, and the lexical score.

Embedding similarities come from the real embedder over the bus; that path is
tested in test_trimmer.py. Here the selection rules and the lexical score are
pinned down.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ragbus.actors.trimmer._compress import (
    compress,
    compress_node,
    lexical_scores,
    sentences,
    similarities,
)
from ragbus.actors.trimmer._trim import from_sources
from ragbus.runtime.text import count_tokens
from ragbus.subjects import Source


def test_sentences_split_at_terminal_punctuation_blank_lines_and_cjk_stops() -> None:
    text = ("Vaccines train immunity. This is e.g. the usual case! Does it (always) work? yes "
            "mostly.\n\nA new paragraph without a stop\n\n  日本語です。次の文")
    assert sentences(text) == [
        "Vaccines train immunity.",
        "This is e.g. the usual case!",
        "Does it (always) work? yes mostly.",
        "A new paragraph without a stop",
        "日本語です。",
        "次の文",
    ]
    assert sentences("   ") == []
    assert sentences("no stop at all") == ["no stop at all"]


def test_the_best_sentences_are_kept_in_text_order() -> None:
    parts = ["Alpha one two three.", "Beta four five six.", "Gamma seven eight nine.",
             "Delta ten eleven twelve."]
    scores = [0.1, 0.9, 0.2, 0.8]
    budget = count_tokens(parts[1]) + count_tokens(parts[3]) + 1
    assert compress_node(parts, scores, budget) == "Beta four five six. Delta ten eleven twelve."


def test_a_long_sentence_does_not_block_shorter_relevant_ones() -> None:
    long = "Relevant but very long " + "words " * 60 + "here."
    parts = [long, "Short relevant one.", "Irrelevant filler text."]
    out = compress_node(parts, [0.9, 0.8, 0.1], 20)
    assert out == "Short relevant one. Irrelevant filler text."


def test_when_no_sentence_fits_the_best_is_cut_to_the_budget() -> None:
    parts = ["one two three four five six seven eight nine ten eleven twelve.", "x " * 40]
    out = compress_node(parts, [0.9, 0.1], 5)
    assert parts[0].startswith(out)
    assert 0 < count_tokens(out) <= 5


def test_small_nodes_are_left_whole_and_the_rest_cut_to_the_ratio() -> None:
    small = "Tiny node."
    big = " ".join(f"Sentence number {i} talks about topic {i}." for i in range(20))
    nodes = from_sources([Source(doc_id="a", chunk_id="a", score=0.9, text=small),
                          Source(doc_id="b", chunk_id="b", score=0.8, text=big)])
    parts = [sentences(n.text) for n in nodes]
    scores = [[1.0] * len(p) for p in parts]
    out = compress(nodes, parts, scores, 0.5, keep_below=32)
    assert out[0] == nodes[0]
    assert out[1].tokens <= nodes[1].tokens // 2
    assert out[1].tokens == count_tokens(out[1].text)


def test_lexical_scores_rank_sentences_with_the_questions_terms_first() -> None:
    question = "Does smoking raise the risk of lung cancer?"
    parts = [
        ["The weather was mild.", "Smokers had a higher risk of lung cancers than others.",
         "Risk was measured yearly."],
        ["Cancer registries were consulted.", "Nothing else happened."],
    ]
    scores = lexical_scores(question, parts)
    assert [len(s) for s in scores] == [3, 2]
    first = scores[0]
    # stemmed like the keyword search: "Smokers", "cancers" match "smoking", "cancer"
    assert first[1] > first[2] > first[0] == 0.0
    assert scores[1][0] > scores[1][1] == 0.0


def test_a_rare_question_term_outweighs_a_common_one() -> None:
    # "cells" is in every sentence of the context, "apoptosis" in one: that one wins
    parts = [["Cells divide.", "Cells grow.", "Cells undergo apoptosis.", "Cells move."]]
    scores = lexical_scores("apoptosis in cells", parts)[0]
    assert scores.index(max(scores)) == 2


def test_a_question_of_stop_words_only_scores_nothing() -> None:
    assert lexical_scores("Is it to be?", [["It is here.", "To be or not."], []]) == [
        [0.0, 0.0], []]
    assert lexical_scores("anything", [[], []]) == [[], []]


def test_similarities_are_cosines() -> None:
    q = np.array([1.0, 0.0], dtype=np.float32)
    v = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(similarities(q, v), [1.0, 0.0, np.sqrt(0.5)], rtol=1e-6)


sentence_text = st.text(alphabet=st.characters(codec="utf-8"),
                        min_size=1, max_size=80).filter(str.strip)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(sentence_text, st.floats(-1, 1)), min_size=1, max_size=10),
       st.integers(4, 120))
def test_a_compressed_node_never_exceeds_its_target(
    scored: list[tuple[str, float]], max_tokens: int
) -> None:
    parts = [p.strip() for p, _ in scored]
    scores = [s for _, s in scored]
    out = compress_node(parts, scores, max_tokens)
    assert count_tokens(out) <= max_tokens
    assert out  # never empty: at worst the best sentence, cut
    best = max(range(len(parts)), key=lambda i: scores[i])
    if count_tokens(parts[best]) <= max_tokens:
        assert parts[best] in out  # the most similar sentence is never lost when it fits
