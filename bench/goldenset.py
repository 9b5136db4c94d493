"""Build the golden set that ships with ragbus from BEIR SciFact (``bench/golden/``).

Each of the first ``--claims`` judged test claims (numeric id order) becomes a
question whose relevant documents are its evidence abstracts from
``qrels/test.tsv``; then come questions whose answer is not in the corpus
(``answerable: false``), written by hand: SciFact is biomedical abstracts, so
questions on sport, geography, literature, cooking and programming have no
answer in it. The claims are statements, not questions: SciFact's own queries,
asked as a user would paste them.

    python -m bench.goldenset [--data DIR] [--claims 40] [--out bench/golden/scifact.jsonl]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench._data import SCIFACT
from bench.quality import load_qrels, load_queries

__all__ = ("ABSENT", "OUT", "build")

OUT = Path(__file__).resolve().parent / "golden" / "scifact.jsonl"

#: questions SciFact's 5,183 abstracts cannot answer
ABSENT = (
    "Who won the 1966 FIFA World Cup final?",
    "What is the capital city of Mongolia?",
    "How do I create a virtual environment in Python?",
    "In which year did the Berlin Wall fall?",
    "Who wrote the novel Moby-Dick?",
    "How long should a Margherita pizza bake in a wood-fired oven?",
    "Which team won the 2010 NBA finals?",
    "How many moons does Neptune have?",
)


def _order(qid: str) -> tuple[int, int | str]:
    return (0, int(qid)) if qid.isdigit() else (1, qid)


def build(data: Path, claims: int) -> list[dict[str, object]]:
    """The golden set's lines: ``claims`` judged claims, then the unanswerable questions."""
    qrels = load_qrels(data / "qrels" / "test.tsv")
    queries = load_queries(data / "queries.jsonl", qrels)
    lines: list[dict[str, object]] = [
        {"id": f"scifact-{qid}", "question": queries[qid], "relevant": qrels[qid]}
        for qid in sorted(queries, key=_order)[:claims]]
    lines += [{"id": f"absent-{i}", "question": q, "answerable": False}
              for i, q in enumerate(ABSENT, start=1)]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=SCIFACT)
    parser.add_argument("--claims", type=int, default=40)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    lines = build(args.data, args.claims)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(line) + "\n" for line in lines))
    print(json.dumps({"out": str(args.out), "questions": len(lines)}))


if __name__ == "__main__":
    main()
