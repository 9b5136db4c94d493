"""A stand-in for the query path: a real actor on the real bus, answering ``Query``.

It streams what the question asks for, written as ``key=value`` words, so each
test steers its own asks: ``tokens=50 pace=0.01 size=20 fail=1 hang=1 prose=1
cached=1`` (``prose`` streams words of a fixed text, for a page a person looks at). The
actor base cancels it when ``<prefix>.cancel.<request_id>`` arrives and sends
``cancelled``, as every actor does; the stand-in records what it received and
what was cancelled.
"""

from __future__ import annotations

from typing import Unpack

import anyio
import anyio.lowlevel

from ragbus.config import Settings
from ragbus.runtime import Actor, ActorOptions, BadRequestError, Context, endpoint
from ragbus.subjects import Done, Query, Source, Sources, Token

__all__ = ("SOURCES", "QueryStandIn", "options", "token_text")

SOURCES = [
    Source(doc_id="otters", chunk_id="otters-1", score=0.912, title="Sea otters",
           text="Sea otters hold hands while sleeping so they do not drift apart."),
    Source(doc_id="rafts", chunk_id="rafts-3", score=0.47, title="Otter rafts",
           text="Groups of resting otters are called rafts."),
    Source(doc_id="otters", chunk_id="otters-4", score=0.31, title="Sea otters",
           text="Otters use rocks as tools to crack open shellfish."),
]


def options(question: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for word in question.split():
        key, sep, value = word.partition("=")
        if sep:
            try:
                out[key] = float(value)
            except ValueError:
                continue
    return out


_PROSE = ("Sea otters hold hands while they sleep, so that the current does not carry them "
          "apart [1]. A group of resting otters is called a raft [2].")
PROSE = _PROSE.split(" ")


def token_text(i: int, size: int = 0, prose: bool = False) -> str:
    if prose:
        return PROSE[i % len(PROSE)] + " "
    text = f"t{i} "
    return text + "x" * max(0, size - len(text)) if size else text


class QueryStandIn(Actor):
    """Answers ``Query`` with sources, a scripted stream of tokens, then done."""

    name = "query-standin"

    def __init__(self, settings: Settings | None = None,
                 **options: Unpack[ActorOptions]) -> None:
        super().__init__(settings, **options)
        self.defaults: dict[str, float] = {}  # options for questions that name none
        self.received: list[Query] = []
        self.cancelled: list[str] = []
        self.cancel_seen = anyio.Event()
        self.started = anyio.Event()

    @endpoint(lambda s: s.query, request=Query)
    async def query(self, request: Query, ctx: Context) -> None:
        self.received.append(request)
        self.started.set()
        opts = {**self.defaults, **options(request.question)}
        try:
            await ctx.publish(request.reply_to,
                              Sources(request_id=request.request_id, sources=SOURCES))
            if opts.get("fail"):
                raise BadRequestError("the stand-in failed on purpose")
            if opts.get("hang"):
                await anyio.sleep_forever()
            size = int(opts.get("size", 0))
            pace = opts.get("pace", 0.0)
            for i in range(int(opts.get("tokens", 5))):
                text = token_text(i, size, bool(opts.get("prose")))
                await ctx.publish(request.reply_to, Token(request_id=request.request_id,
                                                          seq=i, text=text))
                ctx.partial_text_length += len(text)
                ctx.tokens_used += 1
                if pace:
                    await anyio.sleep(pace)
                elif i % 64 == 63:
                    await anyio.lowlevel.checkpoint()
            await ctx.publish(request.reply_to, Done(
                request_id=request.request_id, text_length=ctx.partial_text_length,
                provider="standin", model="script", timings_ms={"retrieve": 1.5},
                cache_hit=bool(opts.get("cached"))))
        except anyio.get_cancelled_exc_class():
            self.cancelled.append(request.request_id)
            self.cancel_seen.set()
            raise
