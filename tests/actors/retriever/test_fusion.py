"""How the dense and keyword rankings become one, and documents share the top."""

from __future__ import annotations

import pytest

from ragbus.actors.retriever._fusion import (
    by_score,
    collapse,
    convex,
    dbsf,
    fuse,
    rrf,
    weighted_rrf,
)
from ragbus.subjects import SearchHit


def hit(chunk: str, score: float, doc: str | None = None) -> SearchHit:
    return SearchHit(chunk_id=chunk, score=score, payload={"doc_id": doc or chunk})


def ids(hits: list[SearchHit]) -> list[str]:
    return [h.chunk_id for h in hits]


# a dense list sure of "a", and a keyword list whose best hit "k" the dense list never saw
DENSE = [hit("a", 0.82), hit("b", 0.51), hit("c", 0.50), hit("d", 0.49)]
KEYWORD = [hit("k", 7.1), hit("c", 6.9), hit("e", 2.0), hit("b", 1.0)]


def test_by_score_merges_shards_keeping_each_chunk_once_at_its_best() -> None:
    merged = by_score([[hit("a", 0.5), hit("b", 0.4)], [hit("b", 0.6), hit("c", 0.1)]])
    assert [(h.chunk_id, h.score) for h in merged] == [("b", 0.6), ("a", 0.5), ("c", 0.1)]


def test_equal_rrf_lets_the_keyword_list_put_its_own_hit_on_top_of_a_sure_dense_one() -> None:
    """Why RRF is not the default: ranks ignore that "a" leads the dense list by far."""
    scores = {h.chunk_id: h.score for h in rrf([DENSE, KEYWORD])}
    assert scores["a"] == scores["k"]  # each leads one list: the margins do not count
    assert max(scores, key=scores.__getitem__) == "c"  # 3rd and 2nd beat 1st and absent


def test_weighted_rrf_with_equal_weights_is_rrf() -> None:
    assert [(h.chunk_id, h.score) for h in weighted_rrf([(1, DENSE), (1, KEYWORD)])] == \
        [(h.chunk_id, h.score) for h in rrf([DENSE, KEYWORD])]


def test_convex_keeps_a_confident_dense_winner_first() -> None:
    fused = convex(DENSE, KEYWORD, dense_weight=0.7)
    # a: 0.7 * 1; c: 0.7 * 0.03 + 0.3 * 0.97; k: 0.3 * 1
    assert ids(fused)[:3] == ["a", "c", "k"]
    assert fused[0].score == pytest.approx(0.7)


def test_convex_lets_agreement_of_both_lists_win_over_either_alone() -> None:
    dense = [hit("a", 0.60), hit("both", 0.59), hit("z", 0.20)]
    keyword = [hit("k", 9.0), hit("both", 8.9), hit("y", 1.0)]
    assert ids(convex(dense, keyword, dense_weight=0.7))[0] == "both"


def test_convex_at_the_ends_of_its_weight_is_one_ranking_alone() -> None:
    # (a list's last candidate normalises to 0, level with hits it does not hold)
    assert ids(convex(DENSE, KEYWORD, dense_weight=1.0))[:3] == ids(DENSE)[:3]
    assert ids(convex(DENSE, KEYWORD, dense_weight=0.0))[:3] == ids(KEYWORD)[:3]


def test_convex_with_one_list_empty_is_the_other() -> None:
    assert ids(convex(DENSE, [], dense_weight=0.7)) == ids(DENSE)
    assert ids(convex([], KEYWORD, dense_weight=0.7)) == ids(KEYWORD)
    assert convex([], [], dense_weight=0.7) == []


def test_dbsf_a_keyword_leader_that_does_not_stand_out_counts_less_than_under_min_max() -> None:
    """Min-max gives any list's first hit full marks; DBSF grades it by how far it stands
    out of its list: a leader ahead by no more than each hit is ahead of the next is
    worth about three quarters."""
    dense = [hit(f"d{i}", 0.80 - 0.04 * i) for i in range(10)]
    even = [hit(f"k{i}", 5.00 - 0.01 * i) for i in range(10)]  # no hit stands out
    assert ids(dbsf(dense, even, 0.7))[:8] == ids(dense)[:8]
    assert "k0" in ids(convex(dense, even, 0.7))[:8]


def test_dbsf_a_keyword_hit_far_ahead_of_its_list_can_still_win() -> None:
    dense = [hit("a", 0.62), hit("b", 0.61), hit("x", 0.60)] + \
        [hit(f"d{i}", 0.55 - 0.01 * i) for i in range(7)]
    keyword = [hit("x", 30.0)] + [hit(f"k{i}", 3.0 - 0.1 * i) for i in range(9)]
    assert ids(dbsf(dense, keyword, 0.7))[0] == "x"


def test_dbsf_of_equal_scores_and_of_one_list() -> None:
    same = [hit("a", 1.0), hit("b", 1.0)]
    assert [h.score for h in dbsf(same, [], 0.7)] == [pytest.approx(0.35)] * 2
    assert ids(dbsf(DENSE, [], 0.7)) == ids(DENSE)
    assert dbsf([], [], 0.7) == []


def test_fuse_dispatches_on_the_configured_method() -> None:
    assert ids(fuse(DENSE, KEYWORD, "dbsf", dense_weight=0.7)) == ids(dbsf(DENSE, KEYWORD, 0.7))
    assert ids(fuse(DENSE, KEYWORD, "convex", dense_weight=0.7)) == \
        ids(convex(DENSE, KEYWORD, 0.7))
    assert ids(fuse(DENSE, KEYWORD, "rrf", dense_weight=0.5)) == ids(rrf([DENSE, KEYWORD]))
    # RRF's weight: above 0.5 the dense list's leader outranks the keyword list's
    weighted = ids(fuse(DENSE, KEYWORD, "rrf", dense_weight=0.8))
    assert weighted.index("a") < weighted.index("k")


def test_collapse_keeps_the_first_hits_of_each_document_in_order() -> None:
    hits = [hit("a1", 0.9, "A"), hit("a2", 0.8, "A"), hit("b1", 0.7, "B"), hit("a3", 0.6, "A"),
            hit("c1", 0.5, "C")]
    assert ids(collapse(hits, 1)) == ["a1", "b1", "c1"]
    assert ids(collapse(hits, 2)) == ["a1", "a2", "b1", "c1"]
    assert ids(collapse(hits, 0)) == ids(hits)
