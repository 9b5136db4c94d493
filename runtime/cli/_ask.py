"""``ragbus ask``: a question in, the answer streamed to the terminal; Ctrl-C stops it.

The question goes out as a ``Query`` on ``<prefix>.query`` with a fresh inbox as
``reply_to``; the events that come back are printed as they arrive: the answer's
tokens live, then the sources and timings. The first Ctrl-C publishes a
``Cancel`` (so the retriever, trimmer and router all stop, and the model stops
generating) and waits briefly for the ``cancelled`` event; a second one quits.
"""

from __future__ import annotations

import argparse
import signal
from dataclasses import dataclass
from typing import Any

import anyio
from rich.console import Console
from rich.markup import escape

from ragbus.config import Loaded
from ragbus.subjects import (
    Cancelled,
    ContextNode,
    ContextReady,
    Done,
    Failed,
    Query,
    QueryFilters,
    Source,
    Sources,
    Subjects,
    Token,
    deadline_after,
)

from ..client import ACCEPT_WAIT_S, Client
from ..connection import NATS
from ..security import connect_as

__all__ = ("SourceDocument", "add_commands", "ask", "by_document", "parse_filters")

EXIT_OK, EXIT_FAILED, EXIT_CANCELLED = 0, 1, 130
_INT_FILTERS = ("version", "min_version", "max_version")
_LIST_FILTERS = {"tag": "tags", "tags": "tags", "doc": "doc_ids", "doc_id": "doc_ids"}


def parse_filters(items: list[str] | None) -> QueryFilters | None:
    """``tag=a``, ``doc=x``, ``after=2024-01-01``, ``before=…``, ``version=3``, … as filters.

    ``tag`` and ``doc`` may repeat (any of them matches); a bad item raises ValueError
    naming it.
    """
    if not items:
        return None
    values: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep or not value:
            raise ValueError(f"--filter {item!r}: expected key=value, e.g. tag=finance")
        if key in _LIST_FILTERS:
            values.setdefault(_LIST_FILTERS[key], []).append(value)
        elif key in _INT_FILTERS:
            try:
                values[key] = int(value)
            except ValueError:
                raise ValueError(f"--filter {item!r}: {key} must be a whole number") from None
        elif key in ("after", "before"):
            values[key] = value
        else:
            known = ", ".join([*_LIST_FILTERS, *_INT_FILTERS, "after", "before"])
            raise ValueError(f"--filter {item!r}: unknown key {key!r}; known: {known}")
    return QueryFilters(**values)


@dataclass(frozen=True, slots=True)
class SourceDocument:
    """A retrieved document: its best chunk, how many of its chunks came back, and the
    numbers the answer cites its passages by ([n] is the n-th passage of the context)."""

    best: Source
    chunks: int
    cited_as: tuple[int, ...]


def by_document(sources: list[Source], context: list[ContextNode]) -> list[SourceDocument]:
    """``sources`` grouped by document, best first: a document with many chunks is one
    line, not one per chunk."""
    cites: dict[str, list[int]] = {}
    for number, node in enumerate(context, start=1):
        cites.setdefault(node.doc_id, []).append(number)
    groups: dict[str, list[Source]] = {}
    for source in sources:
        groups.setdefault(source.doc_id, []).append(source)
    docs = [SourceDocument(best=max(chunks, key=lambda s: s.score), chunks=len(chunks),
                           cited_as=tuple(cites.get(doc_id, ())))
            for doc_id, chunks in groups.items()]
    return sorted(docs, key=lambda d: -d.best.score)


def _source_line(doc: SourceDocument) -> str:
    source = doc.best
    cited = "".join(f"[{n}]" for n in doc.cited_as) or "-"
    more = f", {doc.chunks} chunks" if doc.chunks > 1 else ""
    return (f"{cited} {escape(source.title or source.doc_id)} "
            f"[dim]({escape(source.doc_id)}, score {source.score:.3f}{more})[/]")


def _done_line(done: Done) -> str:
    parts = [f"provider {done.provider or '?'}" + (f" ({done.model})" if done.model else "")]
    for key, label in (("first_token", "first token"), ("total", "total"),
                       ("retrieval", "retrieval"), ("queue", "queue")):
        if key in done.timings_ms:
            parts.append(f"{label} {done.timings_ms[key]:.0f} ms")
    if done.usage:
        parts.append(f"{done.usage.get('completion_tokens', 0)} tokens")
    if done.prompt_version:
        parts.append(f"prompt {done.prompt_version}")
    if done.cache_hit:
        parts.append("cache hit")
    if done.stopped == "repetition":
        parts.append("stopped: the answer repeated itself")
    elif done.stopped:
        parts.append(f"stopped: {done.stopped}")
    return " · ".join(escape(p) for p in parts)


async def ask(nc: NATS, subjects: Subjects, query: Query, out: Console, *,
              stream: bool = True, interrupted: anyio.Event | None = None) -> int:
    """Publish ``query``, print its events, return the exit code (0, 1, or 130 cancelled).

    ``interrupted`` is the Ctrl-C: when it is set a ``Cancel`` is published.
    """
    sources: list[Source] = []
    context: list[ContextNode] = []
    text: list[str] = []
    code = EXIT_FAILED

    def finish_answer() -> None:
        if not stream and text:
            out.file.write("".join(text))
        if text:
            out.file.write("\n")
            out.file.flush()

    async with anyio.create_task_group() as tg, Client(nc, subjects).open_stream(
            subjects.query, query, hint="start the retriever (is `ragbus up` running?)",
            accept_within=ACCEPT_WAIT_S,
    ) as events:
        if interrupted is not None:

            async def cancel_on_interrupt() -> None:
                assert interrupted is not None
                await interrupted.wait()
                await events.cancel("interrupted (Ctrl-C)")

            tg.start_soon(cancel_on_interrupt)
        async for event in events:
            if isinstance(event, Sources):
                sources = list(event.sources)
            elif isinstance(event, ContextReady):
                context = list(event.nodes)
            elif isinstance(event, Token):
                text.append(event.text)
                if stream:
                    out.file.write(event.text)
                    out.file.flush()
            elif isinstance(event, Done):
                finish_answer()
                if sources:
                    out.print("[bold]sources[/]")
                    for doc in by_document(sources, context):
                        out.print(_source_line(doc))
                out.print(f"[dim]{_done_line(event)}[/]")
                code = EXIT_OK
            elif isinstance(event, Failed):
                finish_answer()
                out.print(f"[red]{event.code.value}:[/] {escape(event.message)}"
                          + (f" [dim](trace {event.trace_id})[/]" if event.trace_id
                             and event.trace_id not in event.message else ""))
                code = EXIT_FAILED
            elif isinstance(event, Cancelled):
                finish_answer()
                out.print(f"[yellow]cancelled[/] after {event.partial_text_length} "
                          f"characters ({event.tokens_used} tokens)")
                code = EXIT_CANCELLED
        tg.cancel_scope.cancel()
    return code


def _cmd_ask(args: argparse.Namespace) -> int:
    loaded: Loaded = args.loaded
    settings = loaded.settings
    subjects = Subjects(settings.subject_prefix)
    try:
        filters = parse_filters(args.filter)
    except ValueError as exc:
        Console(stderr=True).print(f"[red]error:[/] {escape(str(exc))}")
        return 2
    out = Console(highlight=False)

    async def run() -> int:
        nc = await connect_as(settings.nats, settings.security, "admin", url=args.nats_url,
                              name="ragbus-ask", max_reconnect_attempts=2)
        interrupted = anyio.Event()
        code = EXIT_CANCELLED  # unless ask() returns: a second Ctrl-C leaves at once
        try:
            query = Query(question=args.question, session_id=args.session, filters=filters,
                          top_k=args.top_k, provider=args.provider, reply_to=nc.new_inbox(),
                          deadline=deadline_after(args.timeout))
            async with anyio.create_task_group() as tg:
                async def watch_signals() -> None:
                    with anyio.open_signal_receiver(signal.SIGINT) as signals:
                        async for _ in signals:
                            if interrupted.is_set():  # the second Ctrl-C: stop now
                                tg.cancel_scope.cancel()
                                return
                            interrupted.set()

                tg.start_soon(watch_signals)
                code = await ask(nc, subjects, query, out, stream=not args.no_stream,
                                 interrupted=interrupted)
                tg.cancel_scope.cancel()
            return code
        finally:
            await nc.close()

    return anyio.run(run)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("ask", help="ask a question; the answer streams as it is generated "
                            "(Ctrl-C cancels)")
    parser.add_argument("question")
    parser.add_argument("--session", help="conversation id: follow-up questions keep context")
    parser.add_argument("--filter", action="append", metavar="KEY=VALUE",
                        help="tag=…, doc=…, after=YYYY-MM-DD, before=…, version=N, "
                             "min_version=N, max_version=N (repeatable)")
    parser.add_argument("--no-stream", action="store_true",
                        help="print the answer once it is complete")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--provider", help="pin a provider by name (default: the router picks)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    parser.set_defaults(func=_cmd_ask, needs_nats=True)
