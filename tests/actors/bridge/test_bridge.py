"""The bridge's protocol over a real WebSocket, against a real bus and a stand-in query path.

The stand-in (``standin.QueryStandIn``) is a real actor answering ``Query`` on the
real nats-server; the end-to-end test through the real actors is test_end_to_end.py.
"""

from __future__ import annotations

import json

import anyio
import httpx
import msgspec
import pytest

from ragbus.actors.bridge import Bridge, CannotListenError
from ragbus.runtime import codec
from ragbus.runtime.connection import NATS
from ragbus.subjects import Cancel, Query, Subjects
from tests.support import running

from .standin import SOURCES, QueryStandIn, token_text
from .wsclient import (
    ask,
    closed_with,
    frames_until_end,
    make_settings,
    open_ws,
    recv,
    wait_released,
)

S = Subjects()


def text_of(frames: list[dict[str, object]]) -> str:
    return "".join(str(f["text"]) for f in frames if f["type"] == "token")


def assert_gapless(frames: list[dict[str, object]]) -> None:
    seqs = [f["seq"] for f in frames if f["type"] == "token"]
    assert seqs == list(range(len(seqs)))


async def test_a_socket_is_ready_then_an_ask_streams_sources_tokens_and_done_in_order(
    nats_url: str,
) -> None:
    settings = make_settings(nats_url)
    async with running(standin := QueryStandIn(settings), bridge := Bridge(settings)), \
            open_ws(bridge) as ws:
        ready = await recv(ws)
        await ask(ws, "a1", "why do otters hold hands? tokens=20 pace=0.002",
                  session_id="conv-1", top_k=3, filters={"tags": ["animals"]})
        frames = await frames_until_end(ws, "a1")

    assert ready["type"] == "ready"
    assert ready["method"] == "anonymous"
    assert ready["identity"] == "anon:127.0.0.1"
    assert ready["limits"]["limit"] == 30
    assert ready["limits"]["remaining"] == 30
    kinds = [f["type"] for f in frames]
    assert kinds[0] == "sources"
    assert kinds[-1] == "done"
    assert set(kinds[1:-1]) == {"token"}
    assert [s["title"] for s in frames[0]["sources"]] == [s.title for s in SOURCES]
    assert frames[0]["sources"][0]["score"] == pytest.approx(0.912)
    assert_gapless(frames)
    assert text_of(frames) == "".join(token_text(i) for i in range(20))
    done = frames[-1]
    assert done["text_length"] == len(text_of(frames))
    assert done["provider"] == "standin"
    assert done["timings_ms"] == {"retrieve": 1.5}
    assert 0 < done["ttft_ms"] <= done["total_ms"]
    # what went on the bus: the client's fields, a deadline, and a session scoped to the client
    (query,) = standin.received
    assert query.question.startswith("why do otters")
    assert query.top_k == 3
    assert query.filters is not None
    assert query.filters.tags == ["animals"]
    assert query.session_id == "anon:127.0.0.1:conv-1"
    assert query.request_id == done["request_id"]
    assert query.deadline is not None
    assert query.reply_to.startswith("_INBOX.")  # the bridge's own inbox


async def test_several_asks_in_flight_on_one_socket_are_told_apart_by_id(nats_url: str) -> None:
    settings = make_settings(nats_url)
    async with running(QueryStandIn(settings), bridge := Bridge(settings)), \
            open_ws(bridge) as ws:
        await recv(ws)
        await ask(ws, "long", "tokens=40 pace=0.003")
        await ask(ws, "short", "tokens=8 pace=0.002 size=6")
        by_id: dict[str, list[dict[str, object]]] = {"long": [], "short": []}
        ended: set[str] = set()
        with anyio.fail_after(10):
            while ended != {"long", "short"}:
                frame = await recv(ws)
                by_id[str(frame["id"])].append(frame)
                if frame["type"] in ("done", "failed", "cancelled"):
                    ended.add(str(frame["id"]))

    for ask_id, n, size in (("long", 40, 0), ("short", 8, 6)):
        frames = by_id[ask_id]
        assert frames[0]["type"] == "sources"
        assert frames[-1]["type"] == "done"
        assert_gapless(frames)
        assert text_of(frames) == "".join(token_text(i, size) for i in range(n))


async def test_cancel_stops_the_answer_and_ends_it_with_cancelled(nats_url: str) -> None:
    settings = make_settings(nats_url)
    async with running(standin := QueryStandIn(settings), bridge := Bridge(settings)), \
            open_ws(bridge) as ws:
        await recv(ws)
        await ask(ws, "c1", "tokens=2000 pace=0.005")
        seen: list[dict[str, object]] = []
        while sum(f["type"] == "token" for f in seen) < 3:
            seen.append(await recv(ws))
        await ws.send(json.dumps({"type": "cancel", "id": "c1"}))
        rest = await frames_until_end(ws, "c1")
        # the socket stays usable after a cancel
        await ask(ws, "c2", "tokens=3")
        after = await frames_until_end(ws, "c2")

    frames = seen + rest
    assert frames[-1]["type"] == "cancelled"
    assert [f["type"] for f in frames].count("cancelled") == 1
    assert frames[-1]["partial_text_length"] == len(text_of(frames))
    assert len(text_of(frames)) < len("".join(token_text(i) for i in range(2000)))
    assert standin.cancelled == [frames[-1]["request_id"]]
    assert after[-1]["type"] == "done"


async def test_closing_the_socket_cancels_every_ask_it_started(nats_url: str) -> None:
    settings = make_settings(nats_url)
    async with running(standin := QueryStandIn(settings), bridge := Bridge(settings)):
        async with open_ws(bridge) as ws:
            await recv(ws)
            await ask(ws, "x", "tokens=5000 pace=0.01")
            await ask(ws, "y", "tokens=5000 pace=0.01")
            tokens: set[str] = set()
            while tokens != {"x", "y"}:
                frame = await recv(ws)
                if frame["type"] == "token":
                    tokens.add(str(frame["id"]))
            asked = {q.request_id for q in standin.received}
        with anyio.fail_after(5):
            while set(standin.cancelled) != asked:
                await standin.cancel_seen.wait()
                standin.cancel_seen = anyio.Event()
        # an ask is finished (its route gone) before its cancel is sent; its place in the
        # shared limits goes back from the bridge's release task
        assert bridge.open_asks == {}
        await wait_released(bridge, "anon:127.0.0.1")
    assert len(asked) == 2


async def test_an_ask_nobody_serves_fails_unavailable_at_once(nats_url: str) -> None:
    settings = make_settings(nats_url, ask_timeout_s=30)
    async with running(bridge := Bridge(settings)), open_ws(bridge) as ws:
        await recv(ws)
        started = anyio.current_time()
        await ask(ws, "u1", "is anyone there?")
        frames = await frames_until_end(ws, "u1")
        took = anyio.current_time() - started
    assert frames[-1]["type"] == "failed"
    assert frames[-1]["code"] == "UNAVAILABLE"
    assert took < 5  # not the 30 s deadline
    assert bridge.open_asks == {}


async def test_an_ask_nobody_answers_fails_at_its_deadline_and_is_cancelled_on_the_bus(
    nats_url: str, nc: NATS
) -> None:
    settings = make_settings(nats_url, ask_timeout_s=0.5)
    black_hole = await nc.subscribe(S.query)  # takes queries, answers nothing
    cancels = await nc.subscribe(S.cancel_all)
    async with running(bridge := Bridge(settings)), open_ws(bridge) as ws:
        await recv(ws)
        await ask(ws, "d1", "hello?")
        frames = await frames_until_end(ws, "d1", timeout=5)
        query: Query = codec.decode((await black_hole.next_msg(timeout=2)).data, Query)
        cancel: Cancel = codec.decode((await cancels.next_msg(timeout=2)).data, Cancel)
    assert [f["type"] for f in frames] == ["failed"]
    assert frames[0]["code"] == "DEADLINE_EXCEEDED"
    assert cancel.request_id == query.request_id == frames[0]["request_id"]


async def test_malformed_frames_get_error_frames_and_the_socket_stays_usable(
    nats_url: str,
) -> None:
    settings = make_settings(nats_url, max_frame_bytes=2048, max_question_chars=100)
    async with running(QueryStandIn(settings), bridge := Bridge(settings)), \
            open_ws(bridge) as ws:
        await recv(ws)
        replies = []
        for raw in ("not json at all",
                    json.dumps({"type": "ask", "id": "m1"}),
                    json.dumps({"type": "launch", "id": "m2"}),
                    json.dumps({"type": "ask", "id": "m3", "question": "   "}),
                    json.dumps({"type": "ask", "id": "m4", "question": "q" * 101}),
                    json.dumps({"type": "ask", "id": "m5", "question": "ok", "top_k": 0}),
                    json.dumps({"type": "ask", "id": "m6", "question": "ok",
                                "session_id": "has spaces"}),
                    json.dumps({"type": "ask", "id": "m7", "question": "x", "pad": "p" * 3000}),
                    json.dumps({"type": "cancel", "id": "never-asked"}),
                    "[1, 2, 3]"):
            await ws.send(raw)
            replies.append(await recv(ws))
        await ask(ws, "ok", "tokens=3")
        frames = await frames_until_end(ws, "ok")

    assert all(r["type"] == "error" for r in replies)
    codes = [(r["code"], r["id"]) for r in replies]
    assert codes == [
        ("BAD_REQUEST", None), ("BAD_REQUEST", "m1"), ("BAD_REQUEST", "m2"),
        ("BAD_REQUEST", "m3"), ("TOO_LARGE", "m4"), ("BAD_REQUEST", "m5"),
        ("BAD_REQUEST", "m6"), ("TOO_LARGE", "m7"), ("NOT_FOUND", "never-asked"),
        ("BAD_REQUEST", None),
    ]
    assert "question" in replies[1]["message"]
    assert replies[4]["details"] == {"size": 101, "limit": 100}
    assert replies[7]["details"]["limit"] == 2048
    assert frames[-1]["type"] == "done"


async def test_an_ask_id_still_running_cannot_be_reused(nats_url: str) -> None:
    settings = make_settings(nats_url)
    async with running(QueryStandIn(settings), bridge := Bridge(settings)), \
            open_ws(bridge) as ws:
        await recv(ws)
        await ask(ws, "same", "tokens=400 pace=0.005")
        await ask(ws, "same", "tokens=1")
        refused = None
        with anyio.fail_after(5):
            while refused is None:
                frame = await recv(ws)
                if frame["type"] == "error":
                    refused = frame
    assert refused["code"] == "BAD_REQUEST"
    assert "still running" in refused["message"]


async def test_a_frame_far_over_the_limit_closes_the_socket_with_1009(nats_url: str) -> None:
    settings = make_settings(nats_url, max_frame_bytes=1024)
    async with running(bridge := Bridge(settings)), open_ws(bridge) as ws:
        await recv(ws)
        await ws.send(json.dumps({"type": "ask", "id": "big", "question": "q" * 8000}))
        code, _ = await closed_with(ws)
    assert code == 1009


async def test_stopping_the_bridge_closes_sockets_with_1001_and_cancels_their_asks(
    nats_url: str,
) -> None:
    settings = make_settings(nats_url)
    async with running(standin := QueryStandIn(settings)):
        bridge = Bridge(settings)
        async with running(bridge), open_ws(bridge) as ws:
            await recv(ws)
            await ask(ws, "s1", "tokens=100000 pace=0.01")
            while (await recv(ws))["type"] != "token":
                pass
            bridge.request_stop()  # drain_grace_s is 1: the ask cannot finish in time
            async with httpx.AsyncClient(base_url=bridge.url, timeout=2) as http:
                for _ in range(50):  # it turns within the 1 s drain
                    ready = await http.get("/readyz")
                    if ready.status_code != 200:
                        break
                    await anyio.sleep(0.02)
            code, reason = await closed_with(ws)
        with anyio.fail_after(5):
            await standin.cancel_seen.wait()
    assert ready.status_code == 503  # draining: no new work from a load balancer
    assert ready.json()["stopping"] is True
    assert code == 1001
    assert "stopping" in reason
    assert standin.cancelled == [standin.received[0].request_id]


async def test_the_page_health_and_readiness_are_served_on_the_same_port(nats_url: str) -> None:
    ok = make_settings(nats_url)
    async with running(QueryStandIn(ok), bridge := Bridge(ok)), \
            httpx.AsyncClient(base_url=bridge.url, timeout=5) as http:
        page = await http.get("/")
        script = await http.get("/app.js")
        style = await http.get("/style.css")
        health = await http.get("/healthz")
        ready = await http.get("/readyz")
        missing = await http.get("/nope")
        plain = await http.get("/ws")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script src="/app.js"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer"
    assert script.headers["content-type"].startswith("text/javascript")
    assert "new WebSocket" in script.text
    assert style.headers["content-type"].startswith("text/css")
    assert health.json() == {"status": "ok"}
    assert ready.status_code == 200
    body = ready.json()
    assert (body["ready"], body["nats"], body["missing"]) == (True, "connected", [])
    assert body["actors"]["query-standin"] == 1
    assert missing.status_code == 404
    assert plain.status_code == 426  # a plain GET on the WebSocket path

    wants_router = make_settings(nats_url, ready_actors=["query-standin", "router"])
    async with running(QueryStandIn(wants_router), bridge := Bridge(wants_router)), \
            httpx.AsyncClient(base_url=bridge.url, timeout=5) as http:
        not_ready = await http.get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json()["missing"] == ["router"]
    assert not_ready.json()["actors"]["query-standin"] == 1


async def test_a_port_in_use_is_refused_with_what_to_do(nats_url: str) -> None:
    settings = make_settings(nats_url)
    async with running(first := Bridge(settings)):
        taken = msgspec.structs.replace(settings, bridge=msgspec.structs.replace(
            settings.bridge, port=first.port))
        with pytest.raises(CannotListenError, match=r"bridge\.port"):
            await Bridge(taken).serve()
