"""Forgetting a conversation over the WebSocket and on the page ("New conversation").

A real nats-server, the real bridge and the real context-trimmer keeping memory in
its KV bucket; the turns are stored the way the router stores them (``TurnDone`` on
``<prefix>.memory.append``). The page test drives headless Chromium like test_page.py.
"""

from __future__ import annotations

import json
import shutil

import anyio

from ragbus.actors.bridge import Bridge
from ragbus.actors.trimmer import ContextTrimmer
from ragbus.actors.trimmer._memory import MemoryStore, SessionMemory
from ragbus.runtime import codec
from ragbus.runtime.connection import NATS
from ragbus.subjects import Subjects, TurnDone, now_ms
from tests.support import running
from tests.support.optional import require

from .standin import QueryStandIn
from .test_page import ARGS, CHROMIUM, async_playwright
from .wsclient import make_jwt, make_settings, open_ws, recv

S = Subjects()


async def remember(nc: NATS, session_id: str, turns: int = 1) -> None:
    """Store ``turns`` turns of ``session_id`` through the trimmer, and wait for them."""
    for i in range(turns):
        await nc.publish(S.memory_append, codec.encode(TurnDone(
            session_id=session_id, request_id=f"{i}-{session_id.replace(':', '-')}",
            question=f"Question {i}?", answer=f"Answer {i}.", at=now_ms())))
    with anyio.fail_after(15):
        while True:
            memory = await kept(nc, session_id)
            if memory is not None and len(memory.turns) == turns:
                return
            await anyio.sleep(0.05)


async def kept(nc: NATS, session_id: str) -> SessionMemory | None:
    store = MemoryStore(await nc.jetstream().key_value(S.bucket("memory")))
    memory, _ = await store.get(session_id)
    return None if memory is None or memory.deleted_at is not None else memory  # a tombstone


async def test_a_socket_forgets_its_own_identitys_session_and_no_other(
    nats_url: str, nc: NATS
) -> None:
    settings = make_settings(nats_url)
    alice, bob = make_jwt(sub="alice"), make_jwt(sub="bob")
    async with running(ContextTrimmer(settings), bridge := Bridge(settings)):
        await remember(nc, "jwt:alice:conv-1", turns=2)
        await remember(nc, "jwt:bob:conv-1")
        async with open_ws(bridge, query=f"?token={alice}") as ws:
            assert (await recv(ws))["identity"] == "jwt:alice"
            await ws.send(json.dumps({"type": "forget", "id": "g1", "session_id": "conv-1"}))
            first = await recv(ws)
            await ws.send(json.dumps({"type": "forget", "id": "g2", "session_id": "conv-1"}))
            again = await recv(ws)
            # a session id that tries to step outside the identity's scope is refused
            await ws.send(json.dumps({"type": "forget", "id": "g3", "session_id": "../bob"}))
            bad = await recv(ws)
        alice_left = await kept(nc, "jwt:alice:conv-1")
        bob_left = await kept(nc, "jwt:bob:conv-1")
        async with open_ws(bridge, query=f"?token={bob}") as ws:
            await recv(ws)
            await ws.send(json.dumps({"type": "forget", "session_id": "conv-1"}))
            bobs = await recv(ws)
        bob_after = await kept(nc, "jwt:bob:conv-1")
    assert first == {"type": "forgotten", "session_id": "conv-1", "existed": True, "turns": 2,
                     "id": "g1"}
    assert (again["existed"], again["turns"]) == (False, 0)
    assert (bad["type"], bad["code"], bad["id"]) == ("error", "BAD_REQUEST", "g3")
    assert alice_left is None
    assert bob_left is not None  # another identity's session of the same name: untouched
    assert len(bob_left.turns) == 1
    assert (bobs["type"], bobs["existed"]) == ("forgotten", True)
    assert bob_after is None


async def test_without_a_trimmer_forgetting_is_refused_as_unavailable(nats_url: str) -> None:
    settings = make_settings(nats_url)
    async with running(bridge := Bridge(settings)), open_ws(bridge) as ws:
        await recv(ws)
        await ws.send(json.dumps({"type": "forget", "id": "g1", "session_id": "conv-1"}))
        refused = await recv(ws)
    assert (refused["type"], refused["code"], refused["id"]) == ("error", "UNAVAILABLE", "g1")


async def test_new_conversation_on_the_page_deletes_the_old_sessions_memory(
    nats_url: str, nc: NATS
) -> None:
    require(async_playwright is not None, "playwright", "pip install -e '.[dev]'")
    require(shutil.which(CHROMIUM) is not None, f"Chromium at {CHROMIUM}",
            "apt-get install -y chromium")
    settings = make_settings(nats_url, allowed_origins=[])
    async with running(standin := QueryStandIn(settings), ContextTrimmer(settings),
                       bridge := Bridge(settings)), async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await browser.new_page()
            page.set_default_timeout(10_000)
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            await page.goto(bridge.url)
            await page.wait_for_selector("#conn[data-state=ready]")
            standin.defaults = {"tokens": 5, "prose": 1}
            await page.fill("#question", "What is a group of otters called?")
            await page.click("#ask")
            await page.wait_for_selector("#answer[data-state=done]")
            old = await page.evaluate("localStorage.getItem('ragbus.session')")
            scoped = standin.received[0].session_id
            assert scoped is not None
            await remember(nc, scoped, turns=3)  # the turns the router would have stored
            await page.click("#new-session")
            await page.wait_for_selector("#session-status[data-state=forgotten]")
            status = await page.inner_text("#session-status")
            new = await page.evaluate("localStorage.getItem('ragbus.session')")
            await page.fill("#question", "And a group of whales?")
            await page.click("#ask")
            await page.wait_for_selector("#answer[data-state=done]")
        finally:
            await browser.close()
        memory = await kept(nc, scoped)
    assert scoped == f"anon:127.0.0.1:{old}"
    assert memory is None
    assert "memory was deleted" in status
    assert new
    assert new != old
    assert standin.received[1].session_id == f"anon:127.0.0.1:{new}"
    assert problems == []


async def test_a_socket_has_at_most_four_forgets_on_the_bus_at_once(
    nats_url: str, nc: NATS
) -> None:
    settings = make_settings(nats_url)
    held = await nc.subscribe(S.session("delete"))  # a trimmer that never answers
    await nc.flush()
    async with running(bridge := Bridge(settings)), open_ws(bridge) as ws:
        await recv(ws)
        for i in range(5):
            await ws.send(json.dumps({"type": "forget", "id": f"g{i}", "session_id": "c"}))
        refused = await recv(ws)  # the fifth, at once
        # the four on the bus end at their deadline, each with its own error
        ended = [await recv(ws, timeout=15) for _ in range(4)]
    assert (refused["type"], refused["code"], refused["id"]) == ("error", "RATE_LIMIT", "g4")
    assert sorted(f["id"] for f in ended) == ["g0", "g1", "g2", "g3"]
    assert {f["code"] for f in ended} == {"DEADLINE_EXCEEDED"}
    assert held.pending_msgs == 4
