"""Back-pressure: tokens are coalesced for a slow reader; a reader that stops is let go.

The slow readers here are real TCP clients with a small receive buffer that read
slowly or not at all, so the bridge's writes really back up.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import msgspec
import pytest
from websockets.asyncio.client import ClientConnection

from ragbus.actors.bridge import Bridge
from ragbus.actors.bridge._outbox import Outbox, TokenStream
from tests.support import running

from .standin import QueryStandIn, token_text
from .wsclient import ask, closed_with, frames_until_end, make_settings, open_ws, recv


def decode(data: bytes) -> dict[str, object]:
    frame: dict[str, object] = msgspec.json.decode(data)
    return frame


# -- the outbox --------------------------------------------------------------------------------


async def test_tokens_queued_behind_a_stuck_write_join_one_frame_numbered_when_written() -> None:
    box = Outbox(1 << 20, on_overflow=lambda: None)
    a, b = TokenStream("a"), TokenStream("b")
    box.put_token(a, "one ")
    box.put_token(b, "x")
    box.put_token(a, "two ")
    box.put_token(a, "three")
    assert len(box) == 2
    assert box.coalesced == 2
    first = decode(await box.get())
    box.put_token(a, "four")  # the earlier run was taken: a new frame
    frames = [first, decode(await box.get()), decode(await box.get())]
    assert frames == [
        {"type": "token", "id": "a", "seq": 0, "text": "one two three"},
        {"type": "token", "id": "b", "seq": 0, "text": "x"},
        {"type": "token", "id": "a", "seq": 1, "text": "four"},
    ]
    assert box.size == 0


async def test_a_frame_after_tokens_keeps_its_place_and_later_tokens_start_anew() -> None:
    box = Outbox(1 << 20, on_overflow=lambda: None)
    a = TokenStream("a")
    box.put_token(a, "before ")
    box.put(b'{"type":"done","id":"a"}', a)
    box.put_token(a, "after")
    frames = [decode(await box.get()) for _ in range(3)]
    assert [f["type"] for f in frames] == ["token", "done", "token"]
    assert frames[0]["text"] == "before "
    assert frames[2]["text"] == "after"


async def test_a_backlog_over_the_limit_is_reported_once() -> None:
    calls: list[int] = []
    box = Outbox(100, on_overflow=lambda: calls.append(1))
    a = TokenStream("a")
    for _ in range(30):
        box.put_token(a, "0123456789")
    assert calls == [1]
    assert box.size == 300


async def test_a_reader_waits_for_room_until_the_backlog_is_half_gone() -> None:
    box = Outbox(100, on_overflow=lambda: None)
    box.put(b"x" * 80)
    box.put(b"y" * 10)
    got_room = anyio.Event()

    async def reader() -> None:
        await box.wait_for_room()
        got_room.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await anyio.sleep(0.02)
        assert not got_room.is_set()
        await box.get()  # 10 bytes left: room
        with anyio.fail_after(1):
            await got_room.wait()


# -- real slow sockets --------------------------------------------------------------------------


async def read_answer(ws: ClientConnection, delay: float) -> list[dict[str, object]]:
    frames: list[dict[str, object]] = []
    with anyio.fail_after(30):
        while not frames or frames[-1]["type"] not in ("done", "failed", "cancelled"):
            frames.append(json.loads(await ws.recv()))
            if delay:
                await anyio.sleep(delay)
    return frames


async def test_a_slow_reader_gets_every_token_in_fewer_larger_frames(nats_url: str) -> None:
    settings = make_settings(nats_url, send_buffer_bytes=1024, socket_send_buffer_bytes=4096,
                             slow_reader_timeout_s=10)
    n, size = 600, 200
    question = f"tokens={n} size={size} pace=0.001"
    async with running(QueryStandIn(settings), bridge := Bridge(settings)):
        answers = {}
        for reader, delay in (("fast", 0.0), ("slow", 0.02)):
            async with open_ws(bridge, rcvbuf=2048, max_queue=1) as ws:
                await recv(ws)
                await ask(ws, reader, question)
                answers[reader] = await read_answer(ws, delay)
        coalesced = bridge.metrics.registry.get_sample_value(
            "ragbus_bridge_coalesced_tokens_total", {"actor": "bridge"})
    expected = "".join(token_text(i, size) for i in range(n))
    counts = {}
    for reader, frames in answers.items():
        tokens = [f for f in frames if f["type"] == "token"]
        assert frames[-1]["type"] == "done"
        assert "".join(str(f["text"]) for f in tokens) == expected
        assert [f["seq"] for f in tokens] == list(range(len(tokens)))
        counts[reader] = len(tokens)
    assert counts["fast"] > n / 2       # a reader that keeps up gets tokens as they come
    assert counts["slow"] < n / 4       # one that lags gets them merged, not queued
    assert coalesced is not None
    assert coalesced >= n - counts["slow"]


@pytest.mark.parametrize(
    ("limits", "why"),
    [
        # the send buffer stays full past the timeout
        ({"slow_reader_timeout_s": 0.5, "max_buffered_bytes": 64 << 20}, "send buffer"),
        # the coalesced backlog grows past its bound long before the timeout
        ({"slow_reader_timeout_s": 30, "max_buffered_bytes": 256 << 10}, "bytes waiting"),
    ],
)
async def test_a_reader_that_stops_reading_is_closed_and_its_ask_cancelled(
    nats_url: str, limits: dict[str, Any], why: str
) -> None:
    settings = make_settings(nats_url, send_buffer_bytes=4096, socket_send_buffer_bytes=4096,
                             **limits)
    async with running(standin := QueryStandIn(settings), bridge := Bridge(settings)):
        async with open_ws(bridge, rcvbuf=4096, max_queue=1) as ws:
            await recv(ws)
            await ask(ws, "stuck", "tokens=1000000 size=100 pace=0.0001")
            with anyio.fail_after(15):
                await standin.cancel_seen.wait()  # the bridge gave up and cancelled the ask
            code, reason = await closed_with(ws, timeout=15)  # what the client finally sees
        closes = bridge.metrics.registry.get_sample_value(
            "ragbus_bridge_closes_total", {"actor": "bridge", "reason": "slow_reader"})
        assert bridge.open_asks == {}
    assert standin.cancelled == [standin.received[0].request_id]
    assert closes == 1
    # the close frame sits behind what the client never read: it may arrive, or the
    # connection is dropped once bridge.close_timeout_s has passed
    assert code in (4408, 1006)
    if code == 4408:
        assert why in reason


async def test_a_reader_that_stops_reading_does_not_hold_up_the_other_clients(
    nats_url: str,
) -> None:
    """Issue #19's "one WebSocket client that never reads": while its writes are backed up
    (and before the bridge gives up on it), other clients' asks are answered in full."""
    settings = make_settings(nats_url, send_buffer_bytes=4096, socket_send_buffer_bytes=4096,
                             slow_reader_timeout_s=120, max_buffered_bytes=64 << 20)
    async with running(standin := QueryStandIn(settings), bridge := Bridge(settings)), \
            open_ws(bridge, rcvbuf=4096, max_queue=1) as stuck:
        await recv(stuck)
        await ask(stuck, "stuck", "tokens=1000000 size=100 pace=0.0001")
        with anyio.fail_after(15):  # its writes back up: tokens start to be coalesced
            while not bridge.metrics.registry.get_sample_value(  # noqa: ASYNC110 - a metric
                    "ragbus_bridge_coalesced_tokens_total", {"actor": "bridge"}):
                await anyio.sleep(0.05)
        answers = []
        async with open_ws(bridge) as other:
            await recv(other)
            for i in range(5):
                await ask(other, f"q{i}", "tokens=50 size=20")
                answers.append(await frames_until_end(other, f"q{i}", timeout=30))
        still_stuck = [a for a in standin.received if a.request_id in bridge.open_asks]
        let_go = list(standin.cancelled)
    expected = "".join(token_text(i, 20) for i in range(50))
    for frames in answers:
        assert frames[-1]["type"] == "done"
        assert "".join(str(f["text"]) for f in frames if f["type"] == "token") == expected
    assert [a.question for a in still_stuck] == ["tokens=1000000 size=100 pace=0.0001"]
    assert let_go == []  # it was stuck all along, not let go first
