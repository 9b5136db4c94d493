"""Trimming rules, without a bus: ranking, near-duplicates, budgets, min_nodes, mode."""

from __future__ import annotations

from collections.abc import Iterator

from hypothesis import given, settings
from hypothesis import strategies as st

from ragbus.actors.trimmer._trim import (
    Node,
    context_tokens,
    dedupe,
    fit,
    from_sources,
    response_mode,
    shortlist,
    similarity,
)
from ragbus.runtime.text import count_tokens
from ragbus.subjects import Source

WORDS = ("cell", "protein", "binding", "vaccine", "trial", "dose", "the", "of", "and", "results",
         "patients", "receptor", "increased", "reduced", "significantly", "mice", "gene", "in")


def source(i: int, text: str, score: float, **metadata: object) -> Source:
    return Source(doc_id=f"d{i}", chunk_id=f"c{i}", score=score, text=text, title=f"t{i}",
                  metadata=dict(metadata))


def sentence(n: int, seed: int) -> str:
    return " ".join(WORDS[(seed * 7 + j * (seed % 5 + 1)) % len(WORDS)] for j in range(n)) + "."


# -- from_sources ------------------------------------------------------------------------


def test_hits_are_ranked_by_score_and_empty_ones_skipped() -> None:
    nodes = from_sources([source(0, "low", 0.1), source(1, "   ", 0.9), source(2, "high", 0.8),
                          source(3, "tie", 0.1)])
    assert [n.chunk_id for n in nodes] == ["c2", "c0", "c3"]  # stable for equal scores
    assert [n.tokens for n in nodes] == [count_tokens(n.text) for n in nodes]


def test_a_widened_hit_is_its_parent_section() -> None:
    parent = "The whole section. " * 20
    (node,) = from_sources([source(0, "a chunk", 0.5, parent_text=parent, source="s.md")])
    assert node.text == parent
    assert node.source == "s.md"
    assert node.to_context().text == parent


# -- dedupe --------------------------------------------------------------------------------


def test_near_duplicates_keep_the_better_scored_copy() -> None:
    base = " ".join(sentence(12, i) for i in range(6))
    variant = base.replace("vaccine", "vaccines", 1)  # one word differs
    other = " ".join(sentence(12, i + 50) for i in range(6))
    nodes = from_sources([source(0, variant, 0.4), source(1, base, 0.9), source(2, other, 0.5),
                          source(3, base.upper(), 0.1)])
    assert similarity(base, variant) >= 0.9
    kept = list(dedupe(nodes, 0.9))
    assert [n.chunk_id for n in kept] == ["c1", "c2"]


def test_consecutive_chunks_sharing_an_overlap_are_not_duplicates() -> None:
    words = [WORDS[(i * 5) % len(WORDS)] + str(i) for i in range(400)]
    first, second = " ".join(words[:200]), " ".join(words[170:370])  # a 30-word overlap
    nodes = from_sources([source(0, first, 0.9), source(1, second, 0.8)])
    assert len(list(dedupe(nodes, 0.9))) == 2


def test_threshold_one_drops_only_identical_texts_and_repeated_ids() -> None:
    nodes = from_sources([source(0, "same words here", 0.9), source(1, "same  words\nhere", 0.8),
                          source(2, "same words there", 0.7)])
    nodes.append(nodes[0])
    assert [n.chunk_id for n in dedupe(nodes, 1.0)] == ["c0", "c2"]


texts = st.lists(st.sampled_from(WORDS), min_size=0, max_size=40).map(" ".join) | st.text(
    alphabet=st.characters(codec="utf-8"), max_size=120)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(texts, st.floats(0, 1)), max_size=12), st.floats(0.3, 1.0))
def test_dedupe_leaves_no_similar_pair_and_drops_only_for_a_better_copy(
    hits: list[tuple[str, float]], threshold: float
) -> None:
    nodes = from_sources([source(i, t, s) for i, (t, s) in enumerate(hits)])
    kept = list(dedupe(nodes, threshold))
    for i, a in enumerate(kept):
        for b in kept[i + 1:]:
            assert similarity(a.text, b.text) < threshold
    for node in nodes:
        if node not in kept:
            assert any(k.score >= node.score and similarity(k.text, node.text) >= threshold
                       for k in kept)


# -- fit ------------------------------------------------------------------------------------


# each is one token, with or without a leading space
ONE_TOKEN = ("cell", "protein", "binding", "trial", "the", "of", "and", "results", "patients",
             "gene", "in", "blood", "heart", "brain", "study", "group", "level", "risk")


def text_of(tokens: int, seed: int) -> str:
    text = " ".join(ONE_TOKEN[(seed * 7 + j * (seed % 5 + 1)) % len(ONE_TOKEN)]
                    for j in range(tokens))
    assert count_tokens(text) == tokens
    return text


def long_nodes(sizes: list[int]) -> list[Node]:
    """Hits of exactly these token counts, ranked in this order."""
    return from_sources([source(i, text_of(n, i), 1 - i / 100) for i, n in enumerate(sizes)])


def test_everything_that_fits_is_kept_unchanged() -> None:
    nodes = long_nodes([100, 100, 100])
    assert fit(nodes, 1500, min_nodes=3, min_node_tokens=32) == nodes
    assert fit(nodes, 300, min_nodes=3, min_node_tokens=32) == nodes
    one_short = fit(nodes, 299, min_nodes=3, min_node_tokens=32)
    assert one_short[:2] == nodes[:2]
    assert one_short[2].tokens == 99


def test_lowest_ranked_are_dropped_first_and_the_last_kept_is_cut_to_fill() -> None:
    nodes = long_nodes([400, 400, 400, 400, 400])
    kept = fit(nodes, 1500, min_nodes=3, min_node_tokens=32)
    assert [n.chunk_id for n in kept] == ["c0", "c1", "c2", "c3"]
    assert kept[:3] == nodes[:3]
    assert nodes[3].text.startswith(kept[3].text)
    assert 1500 - 4 <= context_tokens(kept) <= 1500


def test_a_remainder_below_min_node_tokens_is_not_kept_as_a_fragment() -> None:
    nodes = long_nodes([490, 490, 490, 490])
    sizes = [n.tokens for n in nodes]
    budget = sum(sizes[:3]) + 31
    assert fit(nodes, budget, min_nodes=3, min_node_tokens=32) == nodes[:3]
    kept = fit(nodes, budget + 1, min_nodes=3, min_node_tokens=32)
    assert kept[:3] == nodes[:3]
    assert kept[3].tokens == 32


def test_min_nodes_survive_when_the_best_hits_are_huge() -> None:
    nodes = long_nodes([1400, 1400, 60, 1400])
    kept = fit(nodes, 1500, min_nodes=3, min_node_tokens=32)
    # greedy filling would keep the first and a sliver of the second; min_nodes shares
    assert [n.chunk_id for n in kept] == ["c0", "c1", "c2"]
    assert kept[2] == nodes[2]  # the short one is whole; the long ones share the rest
    assert abs(kept[0].tokens - kept[1].tokens) <= 4
    assert context_tokens(kept) <= 1500


def test_the_hard_budget_can_forbid_min_nodes() -> None:
    nodes = long_nodes([300, 300, 300])
    assert [n.chunk_id for n in fit(nodes, 70, min_nodes=3, min_node_tokens=32)] == ["c0", "c1"]
    assert [n.chunk_id for n in fit(nodes, 40, min_nodes=3, min_node_tokens=32)] == ["c0"]
    assert fit(nodes, 20, min_nodes=3, min_node_tokens=32) == []
    assert fit(nodes, 0, min_nodes=3, min_node_tokens=32) == []


node_sets = st.lists(
    st.tuples(
        st.one_of(
            st.lists(st.sampled_from(WORDS), min_size=1, max_size=600).map(" ".join),
            st.text(alphabet=st.characters(codec="utf-8"),
                    min_size=1, max_size=300),
        ),
        st.floats(0, 1),
    ),
    max_size=14,
)


@settings(max_examples=200, deadline=None)
@given(node_sets, st.integers(0, 6), st.integers(4, 64), st.data())
def test_budget_is_never_exceeded_and_min_nodes_are_honoured(
    hits: list[tuple[str, float]], min_nodes: int, min_node_tokens: int, data: st.DataObject
) -> None:
    nodes = from_sources([source(i, t, s) for i, (t, s) in enumerate(hits)])
    # any budget, or one just around where a node ends (where off-by-ones live)
    ends = [context_tokens(nodes[:j]) for j in range(len(nodes) + 1)]
    budget = data.draw(st.integers(0, 3000) | st.builds(
        lambda end, delta: max(0, end + delta), st.sampled_from(ends), st.integers(-3, 3)))
    kept = fit(nodes, budget, min_nodes=min_nodes, min_node_tokens=min_node_tokens)

    # the budget, counted again from the texts (BPE counts are not additive)
    assert sum(count_tokens(n.text) for n in kept) <= budget
    assert all(n.tokens == count_tokens(n.text) for n in kept)
    # the best hits, in rank order, each whole or cut to a prefix of itself
    assert [n.chunk_id for n in kept] == [n.chunk_id for n in nodes[:len(kept)]]
    for got, orig in zip(kept, nodes, strict=False):
        assert orig.text.startswith(got.text)
        assert got.text
        if got.text != orig.text:  # a cut is never a useless sliver
            assert got.tokens >= min_node_tokens - 3
    # min_nodes survive unless the budget cannot hold that many minimal fragments
    k = min(min_nodes, len(nodes))
    while k and sum(min(n.tokens, min_node_tokens) for n in nodes[:k]) > budget:
        k -= 1
    assert len(kept) >= k
    # when anything was left out, the budget was not left idle: what is left is less than
    # a fragment, plus what cutting at character boundaries and sharing cannot place
    if [n.text for n in kept] != [n.text for n in nodes]:
        cuts = sum(1 for got, orig in zip(kept, nodes, strict=False) if got.text != orig.text)
        assert budget - context_tokens(kept) < min_node_tokens + 4 * cuts + len(kept)


# -- shortlist and mode ----------------------------------------------------------------------


def test_shortlist_keeps_what_could_fit_once_compressed() -> None:
    nodes = long_nodes([400] * 10)
    short = shortlist(nodes, 1500, ratio=0.5, min_nodes=3)
    # 7 nodes compress to ~1400 tokens; the 8th may still be cut in; the rest cannot fit
    assert short == nodes[:8]
    assert shortlist(nodes, 10, ratio=0.5, min_nodes=3) == nodes[:3]


def test_only_the_shortlist_is_compared_for_duplicates() -> None:
    nodes = from_sources([source(i, " ".join(f"w{i}x{j}" for j in range(25)), 1 - i / 100)
                          for i in range(50)])
    assert len({n.tokens for n in nodes}) == 1
    pulled: list[Node] = []

    def feed() -> Iterator[Node]:
        for node in nodes:
            pulled.append(node)
            yield node

    short = shortlist(dedupe(feed(), 0.9), 5 * nodes[0].tokens, ratio=1.0, min_nodes=3)
    assert short == nodes[:6]  # five fit, the sixth may be cut
    assert len(pulled) == 7  # the seventh showed the list was full; the rest never compared


def test_tree_summarize_only_above_the_threshold() -> None:
    assert response_mode(10, 10) == "compact"
    assert response_mode(11, 10) == "tree_summarize"
    assert response_mode(0, 10) == "compact"
