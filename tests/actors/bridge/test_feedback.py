"""Thumbs up or down over the WebSocket and on the page, into the audit store.

A real nats-server, the real bridge and audit-logger, the stand-in query path (a real
actor answering ``Query``; it keeps no audit, so its answers are unknown to the
audit trail and their ratings are kept marked ``known: false``: the link to the
router's record is tested in tests/actors/audit/test_feedback.py). The page test
drives headless Chromium like test_page.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import msgspec

from ragbus.actors.audit import AuditLogger, read_entries
from ragbus.actors.bridge import Bridge
from ragbus.config import AuditSettings, Settings
from ragbus.subjects import AuditEvent
from tests.support import running
from tests.support.optional import require
from tests.support.waiting import wait_for

from .standin import QueryStandIn
from .test_page import ARGS, CHROMIUM, async_playwright
from .wsclient import ask, frames_until_end, make_settings, open_ws, recv


def with_store(settings: Settings, store: Path) -> Settings:
    return msgspec.structs.replace(settings, audit=AuditSettings(store_dir=str(store),
                                                                 text="full",
                                                                 feedback_wait_s=0.2))


def ratings(store: Path) -> list[AuditEvent]:
    return [e.event for e in read_entries(store) if e.event.kind == "answer.feedback"]



async def test_an_answer_rated_over_the_socket_is_kept_in_the_audit_store(
    nats_url: str, tmp_path: Path
) -> None:
    store = tmp_path / "audit"
    settings = with_store(make_settings(nats_url), store)
    async with running(QueryStandIn(settings), AuditLogger(settings),
                       bridge := Bridge(settings)), open_ws(bridge) as ws:
        await recv(ws)  # ready
        await ask(ws, "a1", "tokens=5", session_id="conv-1")
        done = (await frames_until_end(ws, "a1"))[-1]
        assert done["type"] == "done"
        await ws.send(json.dumps({"type": "feedback", "id": "f1", "rating": "down",
                                  "request_id": done["request_id"],
                                  "comment": "Too short."}))
        reply = await recv(ws)
        await wait_for(lambda: len(ratings(store)) == 1)
    assert reply == {"type": "feedback", "request_id": done["request_id"], "known": False,
                     "id": "f1"}
    (event,) = ratings(store)
    assert event.request_id == done["request_id"]
    assert event.session == "anon:127.0.0.1:conv-1"  # the session as the bridge scoped it
    assert event.details["rating"] == "down"
    assert event.details["comment"] == "Too short."
    assert event.details["known"] is False


async def test_a_socket_may_rate_only_its_own_answers_and_bad_frames_are_refused(
    nats_url: str, tmp_path: Path
) -> None:
    store = tmp_path / "audit"
    settings = with_store(make_settings(nats_url), store)
    async with running(QueryStandIn(settings), AuditLogger(settings),
                       bridge := Bridge(settings)), open_ws(bridge) as ws:
        await recv(ws)
        await ws.send(json.dumps({"type": "feedback", "id": "f1", "rating": "up",
                                  "request_id": "someone-elses-answer"}))
        foreign = await recv(ws)
        await ws.send(json.dumps({"type": "feedback", "id": "f2", "rating": "meh",
                                  "request_id": "x"}))
        bad = await recv(ws)
        await ws.send(json.dumps({"type": "feedback", "id": "f3", "rating": "up",
                                  "request_id": "x", "comment": "y" * 2001}))
        long = await recv(ws)
        await ask(ws, "a1", "tokens=3")  # the socket is still usable
        frames = await frames_until_end(ws, "a1")
    assert (foreign["type"], foreign["code"], foreign["id"]) == ("error", "NOT_FOUND", "f1")
    assert (bad["type"], bad["code"], bad["id"]) == ("error", "BAD_REQUEST", "f2")
    assert (long["type"], long["code"], long["id"]) == ("error", "BAD_REQUEST", "f3")
    assert frames[-1]["type"] == "done"
    assert ratings(store) == []


async def test_without_an_audit_logger_a_rating_is_refused_as_unavailable(
    nats_url: str,
) -> None:
    settings = make_settings(nats_url)
    async with running(QueryStandIn(settings), bridge := Bridge(settings)), \
            open_ws(bridge) as ws:
        await recv(ws)
        await ask(ws, "a1", "tokens=3")
        done = (await frames_until_end(ws, "a1"))[-1]
        await ws.send(json.dumps({"type": "feedback", "id": "f1", "rating": "up",
                                  "request_id": done["request_id"]}))
        refused = await recv(ws)
    assert (refused["type"], refused["code"], refused["id"]) == ("error", "UNAVAILABLE", "f1")


async def test_the_page_rates_an_answer_with_a_thumb_and_a_comment(
    nats_url: str, tmp_path: Path
) -> None:
    require(async_playwright is not None, "playwright", "pip install -e '.[dev]'")
    require(shutil.which(CHROMIUM) is not None, f"Chromium at {CHROMIUM}",
            "apt-get install -y chromium")
    store = tmp_path / "audit"
    settings = with_store(make_settings(nats_url, allowed_origins=[]), store)
    async with running(standin := QueryStandIn(settings), AuditLogger(settings),
                       bridge := Bridge(settings)), async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await browser.new_page()
            page.set_default_timeout(10_000)
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            await page.goto(bridge.url)
            await page.wait_for_selector("#conn[data-state=ready]")
            hidden_before = await page.is_hidden("#feedback")
            standin.defaults = {"tokens": 12, "prose": 1}
            await page.fill("#question", "What is a group of otters called?")
            await page.click("#ask")
            await page.wait_for_selector("#answer[data-state=done]")
            await page.fill("#feedback-comment", "Clear, with a source.")
            await page.click("#thumbs-up")
            await page.wait_for_selector("#feedback[data-state=recorded]")
            status = await page.inner_text("#feedback-status")
            await wait_for(lambda: len(ratings(store)) == 1)
        finally:
            await browser.close()
    assert hidden_before
    assert status.startswith("Thanks")
    (event,) = ratings(store)
    assert event.request_id == standin.received[0].request_id
    assert event.details["rating"] == "up"
    assert event.details["comment"] == "Clear, with a source."
    assert problems == []
