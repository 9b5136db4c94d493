"""The dashboard, the alert rules and the README's metric list, against a running system.

``promtool`` (Debian's ``prometheus`` package; ``.ci/run`` installs it and sets
``CI_STRICT=1``, which turns a missing promtool from a skip into a failure)
checks the Prometheus configuration and the rules, and runs the rules' unit tests. Then a
whole ``ragbus up`` does a little of everything (an ingest, questions over NATS and through
the bridge, an answer-cache hit, a provider breaker opening, a bad request, a refused
socket) and its ``/metrics`` must hold every metric the rules and the dashboard name, and
exactly the metrics the README lists, with the types and labels it gives.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import nats
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from ragbus.runtime import Client
from ragbus.runtime.cli import follow_job, submit_job
from ragbus.subjects import Done, IngestRequest, InlineDocument, JobState, Query, Subjects
from tests.support import free_port
from tests.support.cli import RAGBUS
from tests.support.fake_openai import Behaviour, FakeOpenAI
from tests.support.optional import STRICT, require

REPO = Path(__file__).resolve().parents[1]
PROMETHEUS = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "ragbus.json"
S = Subjects()
API_KEY = "rk-" + secrets.token_hex(16)
ORIGIN = "http://localhost:8765"


# -- promtool ------------------------------------------------------------------------------
def promtool() -> str:
    found = shutil.which("promtool")
    require(found is not None, "promtool", "apt-get install -y prometheus")
    assert found is not None
    return found


def test_without_promtool_the_checks_skip_on_a_workstation_and_fail_in_ci(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on it
    monkeypatch.delenv(STRICT, raising=False)
    with pytest.raises(pytest.skip.Exception):
        promtool()
    monkeypatch.setenv(STRICT, "1")
    with pytest.raises(pytest.fail.Exception, match="promtool is missing in CI"):
        promtool()


def test_what_ci_exports_is_not_taken_for_a_setting() -> None:
    """The settings loader refuses unknown RAGBUS_* variables: CI's own must not be one."""
    exported = re.findall(r"^export (\w+)=", (REPO / ".ci" / "run").read_text(), re.M)
    assert STRICT in exported
    assert not [name for name in exported if name.startswith("RAGBUS_")]


def test_promtool_accepts_the_prometheus_config_and_its_alert_rules() -> None:
    done = subprocess.run([promtool(), "check", "config", "prometheus.yml"], cwd=PROMETHEUS,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
    assert "alerts.yml" in done.stdout  # the rules were checked too


def test_the_alerts_fire_and_stay_quiet_as_their_unit_tests_expect() -> None:
    done = subprocess.run([promtool(), "test", "rules", "alerts.test.yml"], cwd=PROMETHEUS,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    tested = {t["alertname"] for case in yaml.safe_load(
        (PROMETHEUS / "alerts.test.yml").read_text())["tests"]
        for t in case.get("alert_rule_test", [])}
    assert len(tested) >= 2


# -- what the rules and the dashboard name -------------------------------------------------------
_METRIC = re.compile(r"\bragbus_[a-z0-9_]+")


def rule_expressions() -> list[str]:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def dashboard_expressions() -> list[str]:
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                found.append(node["expr"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(DASHBOARD.read_text()))
    return found


def named_metrics(expressions: list[str]) -> set[str]:
    """Metric names in PromQL (recording rules are ``ragbus:...``, so never matched)."""
    names = {m for e in expressions for m in _METRIC.findall(e)}
    assert names, "no metric found: the pattern or the files are wrong"
    return names


def test_the_dashboard_covers_what_the_issue_asks_for() -> None:
    names = named_metrics(dashboard_expressions())
    for wanted in ("ragbus_query_first_token_seconds_bucket", "ragbus_query_seconds_bucket",
                   "ragbus_errors_total", "ragbus_answer_cache_total",
                   "ragbus_retrieval_cache_total", "ragbus_embedding_cache_total",
                   "ragbus_breaker_state", "ragbus_router_answers_total",
                   "ragbus_router_fallbacks_total", "ragbus_ingest_chunks_total",
                   "ragbus_ingest_jobs_waiting", "ragbus_audit_events_total",
                   "ragbus_nats_connected"):
        assert wanted in names, wanted


# -- a running system -------------------------------------------------------------------------
@dataclass
class Exported:
    """One metric family of a scrape: its type, labels and whether it has a sample."""

    kind: str
    labels: frozenset[str]
    sampled: bool

    def series(self, name: str) -> set[str]:
        """The names PromQL may use for it."""
        if self.kind == "histogram":
            return {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        return {name}


def exported(text: str) -> dict[str, Exported]:
    """Every ``ragbus_`` family in a scrape, keyed as the README names it."""
    families: dict[str, Exported] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("ragbus_"):
            continue
        labels = {k for s in family.samples for k in s.labels if k not in ("le",)}
        name = f"{family.name}_total" if family.type == "counter" else family.name
        families[name] = Exported(family.type, frozenset(labels), bool(family.samples))
    return families


@dataclass
class System:
    nats_url: str
    metrics_url: str
    page_url: str


def _read_until(proc: subprocess.Popen[str], marker: str, timeout_s: float) -> str:
    lines: list[str] = []
    done = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if marker in line:
                break
        done.set()

    threading.Thread(target=read, daemon=True).start()
    done.wait(timeout_s)
    return "".join(lines)


@pytest.fixture
async def provider() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(Behaviour(tokens=("Otters ", "hold ", "hands [1]", "."))) as fake:
        yield fake


@pytest.fixture
def system(tmp_path: Path, provider: FakeOpenAI) -> Iterator[System]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGBUS_")}
    env.update({
        "RAGBUS_DATA_DIR": str(tmp_path / "data"),
        "RAGBUS_METRICS__PORT": "0",
        "RAGBUS_BRIDGE__PORT": str(free_port()),
        "RAGBUS_BRIDGE__API_KEYS": API_KEY,
        "RAGBUS_BRIDGE__ALLOWED_ORIGINS": ORIGIN,
        "RAGBUS_LOGGING__FORMAT": "json",
        "RAGBUS_RETRIEVER__OPTIMIZE_IDLE_S": "0.5",
        "RAGBUS_ROUTER__PROVIDERS": json.dumps([
            {"name": "cloud", "base_url": provider.base_url, "model": "fake"},
            {"name": "extractive", "kind": "extractive"}]),
        "COLUMNS": "200",
    })
    proc = subprocess.Popen([*RAGBUS, "up", "--ephemeral"], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        text = _read_until(proc, "Ctrl-C", timeout_s=120)
        url = re.search(r"nats://[\d.]+:\d+", text)
        metrics = re.search(r"metrics at (http://\S+/metrics)", text)
        page = re.search(r"page at (\S+)/ ", text)
        assert url, text
        assert metrics, text
        assert page, text
        yield System(nats_url=url[0], metrics_url=metrics[1], page_url=page[1])
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


async def ask_through_the_bridge(system: System, question: str, key: str = API_KEY) -> str:
    """The last frame's type ("done", ...), or "refused" if the socket was closed."""
    ws_url = system.page_url.replace("http", "ws", 1) + "/ws"
    last = ""
    try:
        async with ws_connect(ws_url, origin=ORIGIN,  # type: ignore[arg-type]
                              additional_headers={"Authorization": f"Bearer {key}"},
                              open_timeout=10) as ws:
            with anyio.fail_after(60):
                await ws.send(json.dumps({"type": "ask", "id": "a1", "question": question}))
                while last not in ("done", "failed", "cancelled", "error"):
                    frame = json.loads(await ws.recv())
                    if frame.get("id") == "a1":
                        last = frame["type"]
    except ConnectionClosed:
        return "refused"
    return last


async def exercise(system: System, provider: FakeOpenAI) -> None:
    """A little of everything, so counters and histograms have samples."""
    nc = await nats.connect(system.nats_url)
    try:
        job = IngestRequest(documents=[InlineDocument(
            id="otters", title="Sea otters",
            text="Sea otters hold hands while sleeping so they do not drift apart. "
                 "Otters use rocks as tools to crack open shellfish.")])
        await submit_job(nc, job)
        async for progress in follow_job(nc, job.job_id, timeout_s=120):
            last = progress
        assert last.state == JobState.SUCCEEDED
        client = Client(nc, S)
        for _ in range(2):  # the second is an answer-cache hit
            query = Query(question="Why do sea otters hold hands?", reply_to=nc.new_inbox())
            events = [e async for e in client.stream(S.query, query, timeout=60)]
            assert isinstance(events[-1], Done), events[-1]
        reply = await nc.request(S.query, b"not a query", timeout=10)  # BAD_REQUEST
        assert (reply.headers or {}).get("Ragbus-Error") == "BAD_REQUEST"
    finally:
        await nc.close()
    # the provider is rate-limited now: its breaker opens, extractive answers
    provider.script(Behaviour.rate_limited(retry_after="600"))
    assert await ask_through_the_bridge(system, "What do otters use rocks for?") == "done"
    assert await ask_through_the_bridge(system, "Who?", key="wrong") == "refused"


async def test_every_metric_the_rules_and_the_dashboard_name_is_in_a_running_systems_metrics(
    system: System, provider: FakeOpenAI,
) -> None:
    await exercise(system, provider)
    async with httpx.AsyncClient() as http:
        text = (await http.get(system.metrics_url, timeout=10)).text
    families = exported(text)
    available = {series for name, f in families.items() for series in f.series(name)}
    for source, expressions in (("alerts.yml", rule_expressions()),
                                ("ragbus.json", dashboard_expressions())):
        missing = named_metrics(expressions) - available
        assert not missing, f"{source} names metrics no running system exports: {missing}"

    # ... and each has samples after that work, except restarts (nothing crashed)
    named = named_metrics(rule_expressions() + dashboard_expressions())
    unsampled = {name for name, f in families.items()
                 if not f.sampled and f.series(name) & named}
    assert unsampled <= {"ragbus_actor_restarts_total"}, unsampled

    # the README lists exactly what is exported, with its type and labels
    listed = readme_metrics()
    assert set(listed) == set(families), (
        f"not in the README: {set(families) - set(listed)}; "
        f"in the README, not exported: {set(listed) - set(families)}")
    for name, f in families.items():
        kind, labels = listed[name]
        assert kind == f.kind, f"{name}: README says {kind}, it is a {f.kind}"
        if f.sampled:
            assert labels == f.labels, f"{name}: README labels {sorted(labels)}, " \
                                       f"exported {sorted(f.labels)}"


def readme_metrics() -> dict[str, tuple[str, frozenset[str]]]:
    """The README's metric table: name -> (type, labels)."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Observability", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(ragbus_\w+)` \| (\w+) \| ([^|]*) \|", section, re.M)
    assert rows, "no metric table in the README's Observability section"
    return {name: (kind, frozenset(x.strip() for x in labels.split(",") if x.strip()))
            for name, kind, labels in rows}
