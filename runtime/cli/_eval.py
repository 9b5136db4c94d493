"""``ragbus eval``: a golden set asked through the running system, scored; a CI gate.

``ragbus eval GOLDEN.jsonl`` asks every question as ``ragbus ask`` would and prints
the scores (``--json``: the summary as one JSON object); ``--out FILE.jsonl`` writes
one line per question and the summary last. ``--min-<metric> X`` makes it a gate:
the exit code is 1 when a metric is below its minimum (or was not measured) or a
question failed, 2 for a golden set that cannot be read. ``--compare A B`` prints
the per-metric difference of two results files (B - A) and needs no NATS.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import anyio
import msgspec
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ragbus.config import Loaded
from ragbus.subjects import Subjects

from ..evaluation import (
    METRICS,
    GoldenSetError,
    QuestionResult,
    Summary,
    below,
    compare,
    evaluate,
    load_golden,
    read_results,
    summarize,
)
from ..security import connect_as

__all__ = ("add_commands",)

EXIT_OK, EXIT_BELOW, EXIT_BAD_INPUT = 0, 1, 2


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _print_summary(out: Console, summary: Summary, minimums: dict[str, float]) -> None:
    table = Table(title=f"{summary.questions} questions ({summary.answerable} answerable, "
                        f"{summary.unanswerable} not; {summary.failed} failed)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("minimum", justify="right")
    for name in (*METRICS, "false_refusals"):
        minimum = minimums.get(name)
        table.add_row(name, _fmt(getattr(summary, name)),
                      "" if minimum is None else f"{minimum:g}")
    out.print(table)
    if summary.providers:
        out.print("providers: " + ", ".join(f"{escape(p)} {n}"
                                            for p, n in sorted(summary.providers.items())))


def _cmd_compare(args: argparse.Namespace, out: Console, err: Console) -> int:
    try:
        (_, a), (_, b) = (read_results(p) for p in args.compare)
    except GoldenSetError as exc:
        err.print(f"[red]error:[/] {escape(exc.message)}", soft_wrap=True)
        return EXIT_BAD_INPUT
    rows = compare(a, b)
    if args.json:
        print(json.dumps({name: {"a": x, "b": y, "diff": d}
                          for name, (x, y, d) in rows.items()}))
        return EXIT_OK
    table = Table(title=f"{escape(args.compare[0])} → {escape(args.compare[1])}")
    for column in ("metric", "A", "B", "B - A"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name, (x, y, d) in rows.items():
        table.add_row(name, _fmt(x), _fmt(y), "-" if d is None else f"{d:+.4f}")
    out.print(table)
    return EXIT_OK


def _cmd_eval(args: argparse.Namespace) -> int:
    out = Console(highlight=False)
    err = Console(stderr=True, highlight=False)
    if args.compare:
        return _cmd_compare(args, out, err)
    if args.golden is None:
        err.print("[red]error:[/] name a golden set (GOLDEN.jsonl), or --compare A B")
        return EXIT_BAD_INPUT
    if (args.limit is not None and args.limit < 1) or (args.timeout is not None
                                                       and args.timeout <= 0):
        err.print("[red]error:[/] --limit and --timeout must be above 0")
        return EXIT_BAD_INPUT
    minimums = {name: value for name in METRICS
                if (value := getattr(args, f"min_{name}")) is not None}
    try:
        questions = load_golden(args.golden)
    except GoldenSetError as exc:
        err.print(f"[red]error:[/] {escape(exc.message)}", soft_wrap=True)
        return EXIT_BAD_INPUT
    if args.limit is not None:
        questions = questions[:args.limit]
    loaded: Loaded = args.loaded
    settings = loaded.settings
    evaluation = settings.evaluation
    if args.timeout is not None:
        evaluation = msgspec.structs.replace(evaluation, timeout_s=args.timeout)

    async def run() -> list[QuestionResult]:
        nc = await connect_as(settings.nats, settings.security, "admin", url=args.nats_url,
                              name="ragbus-eval", max_reconnect_attempts=2)
        results: list[QuestionResult] = []
        try:
            async for result in evaluate(nc, Subjects(settings.subject_prefix), questions,
                                         evaluation, provider=args.provider,
                                         judge=args.judge):
                results.append(result)
                if not args.json:
                    mark = "[red]failed[/]" if result.error else (
                        "refused" if result.refused else "answered")
                    err.print(f"[dim]{len(results)}/{len(questions)}[/] {escape(result.id)} "
                              f"{mark}")
        finally:
            await nc.close()
        return results

    results = anyio.run(run)
    summary = summarize(results, evaluation)
    if args.out:
        encoder = msgspec.json.Encoder()
        with Path(args.out).open("wb") as f:
            for record in (*results, summary):
                f.write(encoder.encode(record) + b"\n")
    if args.json:
        sys.stdout.write(msgspec.json.encode(summary).decode() + "\n")
    else:
        _print_summary(out, summary, minimums)
    problems = below(summary, minimums)
    problems += [f"question {r.id} failed: {r.error}" for r in results if r.error]
    for problem in problems:
        err.print(f"[red]below the gate:[/] {escape(problem)}", soft_wrap=True)
    return EXIT_BELOW if problems else EXIT_OK


def _needs_nats(args: argparse.Namespace) -> bool:
    return not args.compare


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("eval", help="score answers to a golden set (retrieval, "
                            "citations, groundedness, refusals); thresholds make it a CI gate")
    parser.add_argument("golden", nargs="?", help="the golden set, JSONL (see README)")
    parser.add_argument("--provider", help="pin a provider by name (default: the router picks)")
    parser.add_argument("--judge", metavar="PROVIDER",
                        help="grade each answer's groundedness and relevance with this LLM "
                        "provider of the router (judge_grounded, judge_relevance)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--out", metavar="FILE.jsonl",
                        help="write one line per question, then the summary")
    parser.add_argument("--limit", type=int, help="ask only the first N questions")
    parser.add_argument("--timeout", type=float,
                        help="seconds per question (default: evaluation.timeout_s)")
    parser.add_argument("--compare", nargs=2, metavar=("A.jsonl", "B.jsonl"),
                        help="print the per-metric difference of two --out files (B - A)")
    for name in METRICS:
        parser.add_argument(f"--min-{name.replace('_', '-')}", dest=f"min_{name}", type=float,
                            metavar="X", help=f"exit 1 if {name} is below X")
    parser.set_defaults(func=_cmd_eval, needs_nats=_needs_nats)
