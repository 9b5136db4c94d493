"""The whole system in production mode, as the README and docker-compose run it.

``ragbus up`` is started as a real process with ``environment = "production"``,
security on and every role's password set (``.env.example``'s shape); an LLM
provider is a real OpenAI-compatible server on loopback. Then, as its users would:
an ingest and the CLI commands as ``admin``, a question through NATS as the
``client`` role, and through the bridge's WebSocket with an API key. Every
feature must pass here: the nats-server log may hold no permissions violation
except the ones this test provokes on purpose as ``client``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import nats
import nats.errors
import pytest
from websockets.asyncio.client import connect as ws_connect

from ragbus.actors.audit import read_entries
from ragbus.config import ROLES
from ragbus.runtime import Client
from ragbus.subjects import Done, Query, QueryEvent, Sources, Subjects, Token
from tests.security._roles import As
from tests.support import free_port
from tests.support.cli import RAGBUS, read_until
from tests.support.fake_openai import Behaviour, FakeOpenAI

S = Subjects()
API_KEY = "rk-" + secrets.token_hex(16)
ORIGIN = "http://localhost:8765"

DOCS = {
    "otters.md": "# Sea otters\n\nSea otters hold hands while sleeping so they do not drift "
                 "apart. Otters use rocks as tools to crack open shellfish.\n",
    "bread.txt": "Sourdough bread rises because wild yeast and lactobacilli ferment the "
                 "dough, producing carbon dioxide and acids.\n",
}


@dataclass
class System:
    """A running ``ragbus up`` in production mode."""

    env: dict[str, str]
    cwd: Path
    nats_url: str
    page_url: str
    log: Path
    proc: subprocess.Popen[str]

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """A ``ragbus`` command as an operator types it (it logs in as admin)."""
        return subprocess.run([*RAGBUS, *args], cwd=self.cwd, env=self.env, text=True,
                              capture_output=True, timeout=timeout)

    def violations(self) -> dict[str, list[str]]:
        """The server's logged permission violations, by user."""
        found: dict[str, list[str]] = {}
        for line in self.log.read_text(errors="replace").splitlines():
            if "violation" in line.lower():
                user = re.search(r'"[^"]*/user:([\w-]+)"', line)
                found.setdefault(user[1] if user else "?", []).append(line)
        return found


def production_env(tmp_path: Path, provider_url: str) -> dict[str, str]:
    """``.env.example``'s variables with real random values, plus what compose adds."""
    example = (Path(__file__).resolve().parents[2] / ".env.example").read_text()
    names = re.findall(r"^(RAGBUS_SECURITY__\w+_PASSWORD)=", example, re.MULTILINE)
    assert sorted(names) == sorted(f"RAGBUS_SECURITY__{r.upper()}_PASSWORD" for r in ROLES)
    assert re.search(r"^RAGBUS_AUDIT__HASH_KEY=", example, re.MULTILINE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGBUS_")}
    env.update({name: secrets.token_hex(16) for name in [*names, "RAGBUS_AUDIT__HASH_KEY"]})
    env.update({
        "RAGBUS_ENVIRONMENT": "production",
        "RAGBUS_SECURITY__ENABLED": "true",
        "RAGBUS_BRIDGE__API_KEYS": API_KEY,
        "RAGBUS_BRIDGE__ALLOWED_ORIGINS": ORIGIN,
        "RAGBUS_BRIDGE__PORT": str(free_port()),
        "RAGBUS_DATA_DIR": str(tmp_path / "data"),
        "RAGBUS_METRICS__PORT": "0",
        "RAGBUS_LOGGING__FORMAT": "json",
        "RAGBUS_RETRIEVER__OPTIMIZE_IDLE_S": "0.5",
        # a real OpenAI-compatible provider first (breakers, answer cache, rate-limit
        # split among router replicas), the extractive answerer behind it
        "RAGBUS_ROUTER__PROVIDERS": json.dumps([
            {"name": "cloud", "base_url": provider_url, "model": "fake",
             "locality": "cloud", "rate_limit_per_minute": 600},
            {"name": "extractive", "kind": "extractive"}]),
        "RAGBUS_ROUTER__RATE_LIMIT_RECOUNT_S": "0.5",
        # the second turn of a session folds the first into a brief the LLM writes
        "RAGBUS_TRIMMER__MEMORY_TURNS": "1",
        "COLUMNS": "200",
    })
    return env


@pytest.fixture
async def provider() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(Behaviour(tokens=("Otters ", "hold ", "hands [1]", "."))) as fake:
        yield fake


@pytest.fixture
def system(tmp_path: Path, provider: FakeOpenAI) -> Iterator[System]:
    env = production_env(tmp_path, provider.base_url)
    proc = subprocess.Popen([*RAGBUS, "up"], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        text = read_until(proc, "Ctrl-C", timeout_s=90)
        assert "ragbus is up" in text, text + _stderr_so_far(proc)
        url = re.search(r"nats://[\d.]+:\d+", text)
        page = re.search(r"page at (\S+)/ ", text)
        assert url, text
        assert page, text
        yield System(env=env, cwd=tmp_path, nats_url=url[0], page_url=page[1],
                     log=tmp_path / "data" / "nats" / "nats-server.log", proc=proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


def _stderr_so_far(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.communicate(timeout=30)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[1]


async def login(system: System, role: str) -> As:
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())

    password = system.env[f"RAGBUS_SECURITY__{role.upper()}_PASSWORD"]
    nc = await nats.connect(system.nats_url, user=role, password=password,
                            inbox_prefix=f"_INBOX.{role}", error_cb=on_error,
                            max_reconnect_attempts=0, connect_timeout=2)
    return As(role, nc, errors)


async def ask_over_nats(nc: nats.NATS, question: str, **fields: object) -> list[QueryEvent]:
    query = Query(question=question, reply_to=nc.new_inbox(), **fields)  # type: ignore[arg-type]
    return [e async for e in Client(nc, S).stream(S.query, query, timeout=60)]


async def upload_through_the_bridge(system: System) -> list[dict[str, object]]:
    """``POST /upload`` (the bridge's port + 1) with an API key, then the job's progress
    on a socket until it has finished."""
    page = re.fullmatch(r"(.*):(\d+)", system.page_url)
    assert page, system.page_url
    async with httpx.AsyncClient(timeout=60) as http:
        posted = await http.post(f"{page[1]}:{int(page[2]) + 1}/upload",
                                 headers={"X-API-Key": API_KEY},
                                 files=[("file", ("rafts.md", b"# Rafts\n\nResting sea "
                                                  b"otters float together in rafts.\n"))])
    assert posted.status_code == 202, posted.text
    ws_url = system.page_url.replace("http", "ws", 1) + "/ws"
    frames: list[dict[str, object]] = []
    async with ws_connect(ws_url, origin=ORIGIN,  # type: ignore[arg-type]
                          additional_headers={"X-API-Key": API_KEY}, open_timeout=10) as ws:
        with anyio.fail_after(60):
            await ws.send(json.dumps({"type": "follow", "job_id": posted.json()["job_id"]}))
            while not frames or not (frames[-1].get("finished") or frames[-1]["type"] == "error"):
                frame = json.loads(await ws.recv())
                if frame["type"] in ("job", "error"):
                    frames.append(frame)
    return frames


async def ask_over_the_bridge(system: System, question: str) -> list[dict[str, object]]:
    ws_url = system.page_url.replace("http", "ws", 1) + "/ws"
    frames: list[dict[str, object]] = []
    async with ws_connect(ws_url, origin=ORIGIN,  # type: ignore[arg-type]
                          additional_headers={"Authorization": f"Bearer {API_KEY}"},
                          open_timeout=10) as ws:
        with anyio.fail_after(60):
            await ws.send(json.dumps({"type": "ask", "id": "b1", "question": question}))
            while not frames or frames[-1]["type"] not in ("done", "failed", "cancelled",
                                                           "error"):
                frame = json.loads(await ws.recv())
                if frame.get("id") == "b1":
                    frames.append(frame)
    return frames


async def test_production_mode_comes_up_ingests_and_answers_with_every_role_minimal(
    system: System, provider: FakeOpenAI, tmp_path: Path,
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text)

    # -- as admin, through the CLI -----------------------------------------------------
    ingest = await anyio.to_thread.run_sync(lambda: system.cli("ingest", str(docs), "--wait"))
    assert ingest.returncode == 0, ingest.stdout + ingest.stderr
    listed = await anyio.to_thread.run_sync(lambda: system.cli("docs", "list"))
    assert listed.returncode == 0, listed.stderr
    assert "otters" in listed.stdout
    assert "bread" in listed.stdout

    # -- as client, straight on the bus -------------------------------------------------
    client = await login(system, "client")
    nc = client.nc
    try:
        first = await ask_over_nats(nc, "Why do sea otters hold hands?", top_k=2,
                                    session_id="s-1")
        again = await ask_over_nats(nc, "Why do sea otters hold hands?", top_k=2)
        follow_up = await ask_over_nats(nc, "And what are rocks for?", session_id="s-1")
        assert client.errors == []

        # what the client role may not do: publish to ingest, index, generate, audit
        forbidden = (S.ingest_submit, S.index_apply("default"), S.generate,
                     S.audit("client", "doc.deleted"),
                     S.audit("ingestor", "doc.deleted"), S.embed, S.breaker("cloud"))
        for subject in forbidden:
            await nc.publish(subject, b"{}")
        await nc.flush()
        for subject in forbidden:
            assert await client.refused("publish", subject), subject
        # nor read another role's inbox, nor the audit stream
        for subject in ("_INBOX.router.>", "_INBOX.admin.>", "_INBOX.>", S.audit_all):
            await nc.subscribe(subject)
            await nc.flush()
            assert await client.refused("subscription", subject), subject
        stream = S.audit_stream
        for api in (f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.CONSUMER.CREATE.{stream}",
                    f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.peek",
                    f"$JS.API.STREAM.MSG.GET.{stream}", f"$JS.API.DIRECT.GET.{stream}"):
            with pytest.raises(nats.errors.TimeoutError):
                await nc.request(api, b"{}", timeout=0.5)
            assert await client.refused("publish", api), api
    finally:
        await nc.close()

    # -- through the bridge, with an API key; the provider is rate-limited by now, so the
    # breaker opens (KV and a transition on the bus) and the extractive answerer steps in
    provider.script(Behaviour.rate_limited(retry_after="600"))
    frames = await ask_over_the_bridge(system, "What makes sourdough bread rise?")
    uploaded = await upload_through_the_bridge(system)

    # -- the rest of the admin CLI --------------------------------------------------------
    cache = await anyio.to_thread.run_sync(lambda: system.cli("cache", "stats"))
    status = await anyio.to_thread.run_sync(lambda: system.cli("status", "--wait", "1"))
    jobs = await anyio.to_thread.run_sync(lambda: system.cli("jobs", "list"))
    asked = await anyio.to_thread.run_sync(lambda: system.cli("ask", "How does bread rise?"))
    # backup and restore as admin: every bucket, the ingest stream, the owners' archives
    backup = tmp_path / "backup"
    made = await anyio.to_thread.run_sync(lambda: system.cli("backup", str(backup), "--caches"))
    restored = await anyio.to_thread.run_sync(
        lambda: system.cli("restore", str(backup), "--force"))
    after_restore = await anyio.to_thread.run_sync(
        lambda: system.cli("ask", "Why do sea otters hold hands?"))

    for events in (first, again, follow_up):
        assert isinstance(events[0], Sources), events
        assert isinstance(events[-1], Done), events[-1]
    assert first[0].sources[0].doc_id.endswith("otters.md")  # type: ignore[union-attr]
    assert "".join(e.text for e in first if isinstance(e, Token)) == "Otters hold hands [1]."
    assert first[-1].provider == "cloud"  # type: ignore[union-attr]
    assert again[-1].cache_hit  # type: ignore[union-attr]
    assert follow_up[-1].provider == "cloud"  # type: ignore[union-attr]

    kinds = [f["type"] for f in frames]
    assert kinds[0] == "sources", frames
    assert kinds[-1] == "done", frames
    assert frames[-1]["provider"] == "extractive"
    assert uploaded[-1]["type"] == "job", uploaded
    assert uploaded[-1]["state"] == "succeeded", uploaded

    assert cache.returncode == 0, cache.stderr
    for bucket in ("rag_retrieval", "rag_answers", "rag_embeddings"):
        row = next(line for line in cache.stdout.splitlines() if bucket in line)
        assert int(row.split("│")[3]) > 0, cache.stdout
    assert status.returncode == 0, status.stderr
    for actor in ("embedder", "retriever", "context-trimmer", "router", "ingestor",
                  "audit-logger", "bridge"):
        assert actor in status.stdout, status.stdout
    breaker = next(line for line in status.stdout.splitlines() if "cloud" in line)
    assert "open" in breaker, status.stdout
    assert jobs.returncode == 0, jobs.stderr
    assert "succeeded" in jobs.stdout, jobs.stdout
    assert asked.returncode == 0, asked.stdout + asked.stderr
    assert "sourdough" in asked.stdout.lower() or "bread" in asked.stdout.lower()
    assert made.returncode == 0, made.stdout + made.stderr
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert "otters.md" in after_restore.stdout, after_restore.stdout + after_restore.stderr

    # the audit trail: every actor's events kept, none refused as written in another's
    # name, question and answer text as keyed hashes
    store = tmp_path / "data" / "audit"
    with anyio.fail_after(30):
        while not any(e.event.kind == "answer.done" for e in read_entries(store)):  # noqa: ASYNC110 - a file another process writes
            await anyio.sleep(0.2)
    events = [e.event for e in read_entries(store)]
    assert [e for e in events if e.kind == "audit.rejected"] == []
    assert {e.actor for e in events} >= {"embedder", "retriever", "context-trimmer", "router",
                                         "ingestor", "audit-logger", "bridge"}
    hashed = [t for e in events for t in (e.question, e.answer) if t is not None]
    assert hashed
    assert all(t.startswith("hmac-sha256:") for t in hashed), hashed

    # nothing refused but what the client was made to try
    violations = system.violations()
    assert len(violations.pop("client", [])) >= 15  # the refusals above: the log is read
    assert violations == {}
