"""``ragbus ask`` against a small stand-in for the query path (retriever, trimmer, router)."""

from __future__ import annotations

import argparse
import io
import os
import signal
from pathlib import Path
from typing import Unpack

import anyio
import pytest
from rich.console import Console

from ragbus.config import Settings
from ragbus.runtime import Actor, ActorOptions, Context, UnavailableError, endpoint
from ragbus.runtime.cli._ask import add_commands, ask, parse_filters
from ragbus.runtime.connection import NATS
from ragbus.subjects import (
    ContextNode,
    ContextReady,
    Done,
    Query,
    QueryFilters,
    Source,
    Sources,
    Subjects,
    Token,
    TrimInfo,
    deadline_after,
)
from tests.support import running
from tests.support.cli import RAGBUS

REPO = Path(__file__).resolve().parents[3]
ANSWER = ["Twenty", "-five days", " of paid vacation", " [1]."]


class QueryStandIn(Actor):
    """Answers a Query the way the real query path does: sources, tokens, done.

    ``slow:`` in the question streams a token every 50 ms for a long time;
    ``fail:`` answers with an error.
    """

    name = "query-stand-in"

    def __init__(self, settings: Settings | None = None,
                 **options: Unpack[ActorOptions]) -> None:
        super().__init__(settings, **options)
        self.queries: list[Query] = []
        self.cancelled: list[str] = []
        self.ticking = anyio.Event()  # a slow answer has sent a few tokens

    @endpoint(lambda s: s.query, request=Query)
    async def query(self, request: Query, ctx: Context) -> None:
        self.queries.append(request)
        await ctx.publish(request.reply_to, Sources(request_id=request.request_id, sources=[
            Source(doc_id="handbook", chunk_id="c1", score=0.91, title="Employee handbook"),
            Source(doc_id="policy", chunk_id="p1", score=0.80, title="Leave policy"),
            Source(doc_id="handbook", chunk_id="c2", score=0.75, title="Employee handbook"),
            Source(doc_id="faq", chunk_id="f1", score=0.40, title="FAQ")]))
        await ctx.publish(request.reply_to, ContextReady(
            request_id=request.request_id, trim_info=TrimInfo(), nodes=[
                ContextNode(chunk_id=c, doc_id=d, text="...", score=1.0)
                for c, d in (("c1", "handbook"), ("p1", "policy"), ("c2", "handbook"))]))
        if request.question.startswith("fail:"):
            raise UnavailableError("Sorry, no answer could be generated right now (trace t-1)")
        pieces = ANSWER if not request.question.startswith("slow:") else ["tick "] * 1000
        try:
            for seq, text in enumerate(pieces):
                await ctx.publish(request.reply_to,
                                  Token(request_id=request.request_id, seq=seq, text=text))
                ctx.partial_text_length += len(text)
                ctx.tokens_used += 1
                if request.question.startswith("slow:"):
                    if seq == 3:
                        self.ticking.set()
                    await anyio.sleep(0.05)
        except anyio.get_cancelled_exc_class():
            self.cancelled.append(request.request_id)
            raise
        await ctx.publish(request.reply_to, Done(
            request_id=request.request_id, text_length=ctx.partial_text_length,
            provider="llm", model="m", usage={"completion_tokens": 4},
            timings_ms={"first_token": 120.0, "total": 480.0}, prompt_version="grounded:1"))


def console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=200, color_system=None, highlight=False), buffer


def make_query(nc: NATS, question: str, **kw: object) -> Query:
    return Query(question=question, reply_to=nc.new_inbox(), deadline=deadline_after(5),
                 **kw)  # type: ignore[arg-type]


async def test_prints_the_answer_then_sources_and_timings(settings: Settings,
                                                          nc: NATS) -> None:
    out, buffer = console()
    async with running(QueryStandIn(settings)) as (stand_in,):
        code = await ask(nc, Subjects(), make_query(nc, "How many vacation days?",
                                                   session_id="s1"), out)
    printed = buffer.getvalue()
    assert code == 0
    lines = printed.splitlines()
    assert lines[0] == "Twenty-five days of paid vacation [1]."
    assert lines[1] == "sources"
    # one line per document, best first, with the passages the answer cites it by
    assert lines[2] == "[1][3] Employee handbook (handbook, score 0.910, 2 chunks)"
    assert lines[3] == "[2] Leave policy (policy, score 0.800)"
    assert lines[4] == "- FAQ (faq, score 0.400)"  # retrieved, trimmed from the context
    assert "provider llm (m)" in lines[5]
    assert "first token 120 ms" in lines[5]
    assert "prompt grounded:1" in lines[5]
    assert stand_in.queries[0].session_id == "s1"


async def test_a_failure_prints_its_code_and_exits_1(settings: Settings, nc: NATS) -> None:
    out, buffer = console()
    async with running(QueryStandIn(settings)):
        code = await ask(nc, Subjects(), make_query(nc, "fail: now"), out)
    assert code == 1
    assert "UNAVAILABLE: Sorry, no answer could be generated right now (trace t-1)" \
        in buffer.getvalue()


async def test_with_no_retriever_running_it_fails_unavailable_and_exits_1(nc: NATS) -> None:
    out, buffer = console()
    query = Query(question="anyone there?", reply_to=nc.new_inbox(),
                  deadline=deadline_after(60))
    code = await ask(nc, Subjects(), query, out)
    assert code == 1
    assert buffer.getvalue().startswith(
        "UNAVAILABLE: no actor is serving rag.query: start the retriever")


async def test_interrupt_publishes_cancel_and_reports_what_was_produced(
    settings: Settings, nc: NATS
) -> None:
    out, buffer = console()
    interrupted = anyio.Event()
    async with running(QueryStandIn(settings)) as (stand_in,):
        query = make_query(nc, "slow: count")

        async def press_ctrl_c() -> None:
            await stand_in.ticking.wait()
            interrupted.set()

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(press_ctrl_c)
                code = await ask(nc, Subjects(), query, out, interrupted=interrupted)
    assert code == 130
    assert stand_in.cancelled == [query.request_id]
    assert "cancelled after" in buffer.getvalue()
    assert buffer.getvalue().count("tick") < 1000


async def test_no_stream_prints_the_whole_answer_once(settings: Settings, nc: NATS) -> None:
    out, buffer = console()
    async with running(QueryStandIn(settings)):
        code = await ask(nc, Subjects(), make_query(nc, "How many?"), out, stream=False)
    assert code == 0
    assert buffer.getvalue().count("Twenty-five days of paid vacation [1].") == 1


def test_filters_parse_into_query_filters() -> None:
    assert parse_filters(None) is None
    assert parse_filters(["tag=hr", "tag=policy", "doc=handbook", "after=2024-01-01",
                          "max_version=3"]) == QueryFilters(
        tags=["hr", "policy"], doc_ids=["handbook"], after="2024-01-01", max_version=3)
    for bad in ("tag", "colour=red", "version=two"):
        with pytest.raises(ValueError, match="--filter"):
            parse_filters([bad])


def test_ask_parses_its_options() -> None:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["ask", "why?", "--session", "s", "--filter", "tag=a",
                              "--no-stream", "--provider", "groq"])
    assert (args.question, args.session, args.filter, args.no_stream, args.provider) == (
        "why?", "s", ["tag=a"], True, "groq")
    assert args.needs_nats


async def test_ctrl_c_in_a_real_terminal_cancels_the_query(
    settings: Settings, nc: NATS, tmp_path: Path
) -> None:
    """The real process: SIGINT, Cancel on the bus, exit 130."""
    env = {**os.environ, "RAGBUS_NATS__URL": settings.nats.url or "", "PYTHONPATH": str(REPO),
           "XDG_DATA_HOME": str(tmp_path)}
    async with running(QueryStandIn(settings)) as (stand_in,):
        with anyio.fail_after(30):
            async with await anyio.open_process(
                    [*RAGBUS, "ask", "slow: count"], cwd=tmp_path,
                    env=env) as proc:
                await stand_in.ticking.wait()
                proc.send_signal(signal.SIGINT)
                await proc.wait()
                assert proc.stdout is not None
                stdout = b"".join([chunk async for chunk in proc.stdout])
    assert proc.returncode == 130, stdout.decode()
    assert stand_in.cancelled == [stand_in.queries[0].request_id]
    assert b"tick" in stdout
    assert b"cancelled after" in stdout
