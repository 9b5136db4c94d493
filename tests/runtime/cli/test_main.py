"""The ``ragbus`` command line, run as a person would run it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from ragbus.runtime.cli import main
from tests.actors.router.test_local_llm import INSTALL_LLM, LLM_INSTALLED
from tests.support import free_port
from tests.support.cli import RAGBUS, children, read_until
from tests.support.optional import require

REPO = Path(__file__).resolve().parents[3]


def test_config_show_masks_secrets_and_names_sources(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAGBUS_NATS__PASSWORD", "very-secret-password")
    monkeypatch.setenv("RAGBUS_RUNTIME__CONCURRENCY", "7")
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    assert "very-secret-password" not in out
    assert "***" in out
    row = next(line for line in out.splitlines() if "runtime.concurrency" in line)
    assert "7" in row
    assert "RAGBUS_RUNTIME__CONCURRENCY" in row


def test_config_error_exits_2_with_the_reason(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAGBUS_RUNTIME__CONCURRENCY", "many")
    assert main(["config", "show"]) == 2
    assert "runtime.concurrency" in capsys.readouterr().err


def test_production_refuses_to_start(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAGBUS_ENVIRONMENT", "production")
    assert main(["up"]) == 2
    assert "refusing to start in production" in capsys.readouterr().err


def test_up_starts_embedded_nats_and_drains_on_sigint(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path), "RAGBUS_METRICS__PORT": "0",
           "RAGBUS_LOGGING__FORMAT": "json"}
    proc = subprocess.Popen([*RAGBUS, "up", "--ephemeral"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        text = read_until(proc, "Ctrl-C", timeout_s=60)
        assert "ragbus is up" in text, text + (proc.stderr.read() if proc.stderr else "")
        assert "nats://127.0.0.1:" in text
        assert "/metrics" in text
        run = json.loads((tmp_path / "ragbus" / "run.json").read_text())
        assert run["nats_url"].startswith("nats://127.0.0.1:")
        status = subprocess.run([*RAGBUS, "status"],
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
        assert run["nats_url"] in status.stdout  # it found the running instance
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "stopped" in out
    assert not (tmp_path / "ragbus" / "run.json").exists()


def test_up_with_the_local_llm_answers_with_it(tmp_path: Path) -> None:
    """``ragbus up --local-llm``: the embedded llama.cpp server (SmolLM2) behind the router."""
    require(LLM_INSTALLED, "the local LLM extra", INSTALL_LLM)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "otters.txt").write_text(
        "Sea otters hold hands while sleeping so they do not drift apart.\n")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAGBUS_")},
           "XDG_DATA_HOME": str(tmp_path), "RAGBUS_METRICS__PORT": "0",
           "RAGBUS_LOGGING__FORMAT": "json", "RAGBUS_BRIDGE__PORT": "0",
           "RAGBUS_ROUTER__LOCAL__N_CTX": "2048", "RAGBUS_ROUTER__LOCAL__PARALLEL": "1"}
    proc = subprocess.Popen([*RAGBUS, "up", "--ephemeral", "--local-llm"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        text = read_until(proc, "Ctrl-C", timeout_s=120)
        assert "ragbus is up" in text, text

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([*RAGBUS, *args], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=180)

        assert cli("ingest", "docs", "--wait").returncode == 0
        asked = cli("ask", "Why do sea otters hold hands?")
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert asked.returncode == 0, asked.stdout + asked.stderr
    assert "provider local (SmolLM2-135M-Instruct)" in asked.stdout
    assert proc.returncode == 0


def test_up_on_a_three_node_cluster_survives_losing_a_node(tmp_path: Path) -> None:
    """``ragbus up --cluster 3``: every stream and bucket at three replicas; kill -9 one
    node and the system still ingests and answers, and ``ragbus status`` says so."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "otters.txt").write_text(
        "Sea otters hold hands while sleeping so they do not drift apart.\n")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAGBUS_")},
           "XDG_DATA_HOME": str(tmp_path), "RAGBUS_METRICS__PORT": "0",
           "RAGBUS_LOGGING__FORMAT": "json", "RAGBUS_BRIDGE__PORT": "0", "COLUMNS": "220"}
    proc = subprocess.Popen([*RAGBUS, "up", "--ephemeral", "--cluster", "3"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*RAGBUS, *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120)

    try:
        text = read_until(proc, "Ctrl-C", timeout_s=120)
        assert "3-node cluster (replicas 3)" in text, text
        assert cli("ingest", "docs", "--wait").returncode == 0
        before = cli("status", "--wait", "1")
        nodes = subprocess.run(["pgrep", "-P", str(proc.pid), "nats-server"],
                               capture_output=True, text=True).stdout.split()
        assert len(nodes) == 3
        os.kill(int(nodes[0]), signal.SIGKILL)
        asked = cli("ask", "Why do sea otters hold hands?")
        (tmp_path / "docs" / "rafts.txt").write_text("Groups of resting otters are rafts.\n")
        again = cli("ingest", "docs", "--wait")
        after = cli("status", "--wait", "1")
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "JetStream meta leader" in before.stdout, before.stdout + before.stderr
    assert "RAG_INGEST" in before.stdout
    ingest_row = next(line for line in before.stdout.splitlines() if "RAG_INGEST" in line)
    assert "│ 3 " in ingest_row  # three replicas
    assert asked.returncode == 0, asked.stdout + asked.stderr
    assert "otters" in asked.stdout.lower()
    assert again.returncode == 0, again.stdout + again.stderr
    assert "down" in after.stdout


def _actor_children(pid: int, names: list[str], log: Path) -> dict[str, int]:
    """``up --processes``'s running children by the actor each runs: child ``i`` runs
    ``names[i]``, and the parent logs each start (a warm spare's command line does not
    name the actor it became)."""
    found: dict[str, int] = {}
    for line in log.read_text().splitlines():
        if line.startswith("{") and (event := json.loads(line))["event"] == "replica.started":
            found[names[event["replica"]]] = event["pid"]
    running = children(pid)
    return {name: child for name, child in found.items() if child in running}


def test_up_with_processes_runs_each_actor_in_its_own_restarted_process(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "otters.txt").write_text(
        "Sea otters hold hands while sleeping so they do not drift apart.\n")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAGBUS_")},
           "XDG_DATA_HOME": str(tmp_path), "RAGBUS_METRICS__PORT": str(free_port()),
           "RAGBUS_LOGGING__FORMAT": "json"}
    names = ["embedder", "retriever", "ingestor", "context-trimmer", "router"]
    log = tmp_path / "up.jsonl"
    with log.open("w") as sink:
        proc = subprocess.Popen([*RAGBUS, "up", "--ephemeral", "--processes", "--only",
                                 ",".join(names)], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=sink, text=True)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*RAGBUS, *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=180)

    try:
        text = read_until(proc, "Ctrl-C", timeout_s=300)
        assert "ragbus is up" in text, text
        before = _actor_children(proc.pid, names, log)
        assert sorted(before) == sorted(names)  # one process each, none in the parent
        # metrics: actor i of --only on the metrics port + i (processes cannot share one)
        base = int(env["RAGBUS_METRICS__PORT"])
        for i, name in enumerate(names):
            with urllib.request.urlopen(f"http://127.0.0.1:{base + i}/metrics",
                                        timeout=10) as page:
                assert f'actor="{name}"' in page.read().decode()
        assert cli("ingest", "docs", "--wait").returncode == 0
        assert "otters" in cli("ask", "Why do sea otters hold hands?").stdout.lower()

        os.kill(before["retriever"], signal.SIGKILL)
        deadline = time.monotonic() + 120
        while _actor_children(proc.pid, names, log).get("retriever") in (
                None, before["retriever"]):
            assert time.monotonic() < deadline, "the retriever was not started again"
            time.sleep(0.2)
        deadline = time.monotonic() + 120
        while (asked := cli("ask", "Why do sea otters hold hands?")).returncode != 0:
            assert time.monotonic() < deadline, asked.stdout + asked.stderr  # still loading
            time.sleep(1)
        assert "otters" in asked.stdout.lower()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in before.values())
