"""Token coalescing: the first text at once, then runs of 16 characters or 15 ms."""

from __future__ import annotations

import anyio

from ragbus.actors.router._coalesce import Coalescer


class Sink:
    def __init__(self) -> None:
        self.sent: list[tuple[int, str, float]] = []
        self.second = anyio.Event()

    async def __call__(self, seq: int, text: str) -> None:
        self.sent.append((seq, text, anyio.current_time()))
        if len(self.sent) == 2:
            self.second.set()


async def test_first_text_goes_at_once_then_runs_of_at_least_min_chars() -> None:
    sink = Sink()
    c = Coalescer(sink, min_chars=16, max_wait_s=10.0)
    for piece in ["Hel", "lo", " wor", "ld, ", "how ", "are ", "you", " today?"]:
        await c.add(piece)
    assert [s[1] for s in sink.sent] == ["Hel", "lo world, how are ", ]
    assert c.pending == len("you today?")
    await c.flush()
    assert [s[0] for s in sink.sent] == [0, 1, 2]
    assert "".join(s[1] for s in sink.sent) == "Hello world, how are you today?"


async def test_held_text_goes_out_after_max_wait_even_if_no_more_comes() -> None:
    sink = Sink()
    c = Coalescer(sink, min_chars=16, max_wait_s=0.015)
    async with anyio.create_task_group() as tg:
        tg.start_soon(c.run_timer)
        await c.add("first")
        held_at = anyio.current_time()
        await c.add("ab")
        await c.add("cd")
        with anyio.fail_after(1):
            await sink.second.wait()
        tg.cancel_scope.cancel()
    assert sink.sent[1][:2] == (1, "abcd")
    assert sink.sent[1][2] - held_at >= 0.015


async def test_zero_wait_sends_every_piece() -> None:
    sink = Sink()
    c = Coalescer(sink, min_chars=16, max_wait_s=0.0)
    for piece in "abc":
        await c.add(piece)
    assert [s[1] for s in sink.sent] == ["a", "b", "c"]
