"""The page in a real browser: headless Chromium (the Debian package) driven by Playwright.

It loads the page from the bridge, asks, watches the answer grow token by token,
presses Stop and sees the answer stop; then lets an answer finish and checks the
sources, timings and cache badge. Screenshots go to ``test-artifacts/`` for a
person to look at. Skipped, with the reason shown, only where Chromium or
Playwright is not installed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import anyio
import pytest

from ragbus.actors.bridge import Bridge
from tests.support import running
from tests.support.optional import require

from .standin import QueryStandIn
from .wsclient import make_settings

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts"

try:
    from playwright.async_api import Page, async_playwright
except ImportError:  # pragma: no cover - depends on the machine
    async_playwright = None  # type: ignore[assignment]

@pytest.fixture(autouse=True)
def _browser_installed() -> None:
    require(async_playwright is not None, "playwright", "pip install -e '.[dev]'")
    require(Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is not None,
            f"Chromium at {CHROMIUM}", "apt-get install -y chromium")


async def answer_length(page: Page) -> int:
    length: int = await page.evaluate("document.getElementById('answer').textContent.length")
    return length


async def test_ask_watch_the_answer_stream_press_stop_and_see_it_stop(nats_url: str) -> None:
    settings = make_settings(nats_url, allowed_origins=[])  # the bridge's own page is allowed
    ARTIFACTS.mkdir(exist_ok=True)
    async with running(standin := QueryStandIn(settings), bridge := Bridge(settings)), \
            async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await browser.new_page(viewport={"width": 960, "height": 760})
            page.set_default_timeout(10_000)
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)

            await page.goto(bridge.url)
            await page.wait_for_selector("#conn[data-state=ready]")
            session = await page.evaluate("localStorage.getItem('ragbus.session')")

            # a long, paced answer: Stop lands in the middle of it
            standin.defaults = {"tokens": 400, "pace": 0.03, "prose": 1}
            await page.fill("#question", "Why do sea otters hold hands?")
            await page.click("#ask")
            lengths: list[int] = []
            with anyio.fail_after(10):
                while len(set(lengths)) < 5:
                    lengths.append(await answer_length(page))
                    await anyio.sleep(0.05)
            assert await page.get_attribute("#answer", "data-state") == "streaming"
            await page.wait_for_selector("#sources li")
            await page.click("#stop")
            await page.wait_for_selector("#answer[data-state=stopped]")
            stopped_at = await answer_length(page)
            await anyio.sleep(0.6)  # ~20 more tokens would have come
            after = await answer_length(page)
            await page.screenshot(path=str(ARTIFACTS / "bridge-page-stopped.png"), full_page=True)
            stopped_text = await page.inner_text("#answer")
            source_titles = await page.locator("#sources .source-title").all_inner_texts()
            chunk_badges = await page.locator("#sources .source-chunks").all_inner_texts()

            # then one that finishes: sources, timings and the cache badge
            standin.defaults = {"tokens": 40, "pace": 0.005, "prose": 1, "cached": 1}
            await page.fill("#question", "What is a group of otters called?")
            await page.press("#question", "Enter")
            await page.wait_for_selector("#answer[data-state=done]")
            await page.wait_for_selector("#timings dt")
            timings = await page.locator("#timings dt").all_inner_texts()
            cache_badge = await page.is_visible("#cache")
            provider = await page.inner_text("#provider")
            await page.screenshot(path=str(ARTIFACTS / "bridge-page-done.png"), full_page=True)
        finally:
            await browser.close()

    # tokens arrived one after another: the text grew in several steps, never shrank
    growing = [n for n in lengths if n > 0]
    assert len(set(growing)) >= 4
    assert growing == sorted(growing)
    # Stop stopped it: nothing more arrived, well short of the full answer, and the
    # request was cancelled on the bus
    assert after == stopped_at
    assert 0 < stopped_at < 400 * 4
    assert stopped_text.startswith("Sea otters hold hands")
    assert standin.cancelled == [standin.received[0].request_id]
    # three chunks, two documents: one entry each, best first, the otters' two chunks said
    assert source_titles == ["Sea otters", "Otter rafts"]
    assert chunk_badges == ["2 chunks"]
    # the session id is kept in localStorage and sent with each ask (scoped by the bridge)
    assert session
    assert standin.received[0].session_id == f"anon:127.0.0.1:{session}"
    assert standin.received[1].session_id == standin.received[0].session_id
    assert timings[:2] == ["first token", "total"]
    assert cache_badge
    assert provider.startswith("standin")
    assert problems == []


async def test_the_page_warns_when_few_asks_are_left_and_shows_errors_plainly(
    nats_url: str,
) -> None:
    settings = make_settings(nats_url, allowed_origins=[], asks_per_minute=2)
    ARTIFACTS.mkdir(exist_ok=True)
    async with running(standin := QueryStandIn(settings), bridge := Bridge(settings)), \
            async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await browser.new_page(viewport={"width": 960, "height": 640})
            page.set_default_timeout(10_000)
            await page.goto(bridge.url)
            await page.wait_for_selector("#conn[data-state=ready]")
            warned_at_start = await page.is_visible("#limit-warning")

            standin.defaults = {"fail": 1}
            await page.fill("#question", "This one fails")
            await page.click("#ask")
            await page.wait_for_selector("#answer[data-state=failed]")
            failure = await page.inner_text("#error")
            await page.wait_for_selector("#limit-warning:not([hidden])")
            warning = await page.inner_text("#limit-warning")

            standin.defaults = {"tokens": 3}
            await page.fill("#question", "And this one?")
            await page.click("#ask")
            await page.wait_for_selector("#answer[data-state=done]")
            await page.fill("#question", "One too many")
            await page.click("#ask")
            await page.locator("#limit-warning", has_text="Rate limit exceeded").wait_for()
            refused = await page.inner_text("#limit-warning")
            await page.screenshot(path=str(ARTIFACTS / "bridge-page-limited.png"), full_page=True)
        finally:
            await browser.close()
    assert not warned_at_start
    assert "the stand-in failed on purpose" in failure
    assert "BAD_REQUEST" in failure
    assert warning.startswith("1 of 2 questions left this minute")
    assert refused.startswith("Rate limit exceeded. Retry after")
    assert len(standin.received) == 2
