"""A small real actor whose behaviour each test steers through the message itself."""

from __future__ import annotations

from typing import Unpack

import anyio

from ragbus.config import Settings
from ragbus.runtime import Actor, ActorOptions, BadRequestError, Context, endpoint
from ragbus.subjects import Request, StreamRequest, Subjects, Token


class Ping(Request, frozen=True, kw_only=True):
    text: str = ""
    sleep_s: float = 0.0
    fail: str | None = None  # "bad_request" | "crash" | "group"


class Pong(Request, frozen=True, kw_only=True):
    text: str
    instance: str


class StreamPing(StreamRequest, frozen=True, kw_only=True):
    tokens: int = 3
    delay_s: float = 0.0  # before the first token
    sleep_s: float = 0.0
    fail_after: int | None = None


async def _raise_bad_request() -> None:
    raise BadRequestError("raised by a child task")


def echo_subject(s: Subjects) -> str:
    return f"{s.prefix}.test.echo"


def stream_subject(s: Subjects) -> str:
    return f"{s.prefix}.test.stream"


def accepted_stream_subject(s: Subjects) -> str:
    """The same stream from an endpoint that acknowledges what it takes (``accept=True``)."""
    return f"{s.prefix}.test.accepted"


class Echo(Actor):
    """Echoes text back; can sleep, fail or stream on request."""

    name = "echo"

    def __init__(self, settings: Settings | None = None,
                 **options: Unpack[ActorOptions]) -> None:
        super().__init__(settings, **options)
        self.active = 0
        self.max_active = 0
        self.handled = 0
        self.cancelled: list[str] = []
        self.started_work = anyio.Event()

    @endpoint(echo_subject, request=Ping)
    async def ping(self, request: Ping, ctx: Context) -> Pong:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.started_work.set()
        try:
            if request.sleep_s:
                await anyio.sleep(request.sleep_s)
            if request.fail == "bad_request":
                raise BadRequestError("you asked for it", details={"field": "fail"})
            if request.fail == "group":
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_raise_bad_request)
            if request.fail == "crash":
                raise RuntimeError("secret internals: password=hunter2")
            self.handled += 1
            return Pong(request_id=request.request_id, text=request.text, instance=self.id)
        except anyio.get_cancelled_exc_class():
            self.cancelled.append(request.request_id)
            raise
        finally:
            self.active -= 1

    @endpoint(accepted_stream_subject, request=StreamPing, accept=True)
    async def accepted_stream(self, request: StreamPing, ctx: Context) -> None:
        await self.stream(request, ctx)

    @endpoint(stream_subject, request=StreamPing)
    async def stream(self, request: StreamPing, ctx: Context) -> None:
        self.started_work.set()
        if request.delay_s:
            await anyio.sleep(request.delay_s)
        for seq in range(request.tokens):
            if request.fail_after is not None and seq == request.fail_after:
                raise BadRequestError("stream failed on purpose")
            await ctx.publish(request.reply_to,
                              Token(request_id=request.request_id, seq=seq, text=f"t{seq} "))
            ctx.partial_text_length += 3
            ctx.tokens_used += 1
            if request.sleep_s:
                await anyio.sleep(request.sleep_s)
        from ragbus.subjects import Done

        await ctx.publish(request.reply_to, Done(request_id=request.request_id,
                                                 text_length=ctx.partial_text_length))
