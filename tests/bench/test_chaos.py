"""bench.chaos's own arithmetic: what it calls lost and duplicated, and its counter sums.

The full run takes minutes and is not part of the suite; these check the parts of it
that decide its verdicts, on a real (embedded Qdrant) copy of a shard.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from bench._chaos_ingest import check_copy, chunk_shas
from bench._chaos_procs import CounterTotals
from ragbus.actors.retriever.store import EdgeStore, Record
from ragbus.subjects import InlineDocument

TEXT = " ".join(f"Sentence {i} about the marsh beetle and its winter burrow." for i in range(120))


def _write(data_dir: Path, points: list[tuple[str, str, bool]]) -> None:
    """(doc id, chunk digest, deleted) points in a copy of shard ``default``."""
    with EdgeStore(data_dir / "default") as store:
        store.ensure_collection(4)
        store.upsert(Record(id=str(uuid.uuid4()), dense=[1.0, 0.0, 0.0, float(i)],
                            payload={"doc_id": doc, "chunk_sha256": sha, "deleted": deleted,
                                     "text": "t"})
                     for i, (doc, sha, deleted) in enumerate(points))


def test_a_copy_missing_a_chunk_or_holding_a_stale_one_is_counted(tmp_path: Path) -> None:
    shas = sorted(chunk_shas(TEXT))
    assert len(shas) >= 3  # the text makes several chunks
    last = {"d": InlineDocument(id="d", text=TEXT)}
    _write(tmp_path / "whole", [("d", s, False) for s in shas]
           + [("d", "an-old-version", True), ("other", "x", False)])
    assert check_copy(tmp_path / "whole", last) == (len(shas), 0, 0)

    # the first chunk missing, one of an old version still live, one held twice
    _write(tmp_path / "bad", [("d", s, False) for s in shas[1:]]
           + [("d", "an-old-version", False), ("d", shas[1], False)])
    assert check_copy(tmp_path / "bad", last) == (len(shas), 1, 2)


def _samples(restarts: float, published: float) -> dict[tuple[str, tuple[tuple[str, str], ...]],
                                                        float]:
    return {("ragbus_actor_restarts_total", (("actor", "router"),)): restarts,
            ("ragbus_audit_events_total", (("actor", "router"), ("result", "published"))):
                published,
            ("ragbus_audit_events_total", (("actor", "router"), ("result", "dropped"))): 1.0}


def test_counters_add_up_over_the_processes_that_served_a_port_in_turn() -> None:
    totals = CounterTotals()
    totals.see(9000, _samples(0, 5), "ragbus_audit_events_total", result="published")
    totals.see(9000, _samples(0, 40), "ragbus_audit_events_total", result="published")
    # killed and restarted: the new process counts from 0, past the old one's count
    totals.see(9000, _samples(1, 50), "ragbus_audit_events_total", result="published")
    totals.see(9001, _samples(0, 7), "ragbus_audit_events_total", result="published")
    assert totals.total("ragbus_audit_events_total", result="published") == 40 + 50 + 7
