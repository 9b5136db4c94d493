"""``ragbus eval`` against the real query path: real nats-server, real embedder, retriever,
context-trimmer and router (extractive provider), the command in its own process."""

from __future__ import annotations

import json
import os
from pathlib import Path

import anyio
import pytest

from ragbus.actors.embedder import Embedder
from ragbus.actors.ingestor import Ingestor
from ragbus.actors.retriever import Retriever
from ragbus.actors.router import Router
from ragbus.actors.trimmer import ContextTrimmer
from ragbus.config import (
    IngestorSettings,
    NatsSettings,
    ProviderSettings,
    RetrieverSettings,
    RouterSettings,
    RuntimeSettings,
    Settings,
)
from ragbus.runtime.cli import follow_job, submit_job
from ragbus.runtime.connection import NATS
from ragbus.runtime.evaluation import read_results
from ragbus.subjects import IngestRequest, InlineDocument, JobState
from tests.support import running
from tests.support.cli import RAGBUS
from tests.support.fake_openai import Behaviour, FakeOpenAI

DOCS = [
    InlineDocument(id="otters", title="Sea otters", text=(
        "Sea otters hold hands while they sleep so that they do not drift apart. "
        "They keep a favourite rock in a pouch under the arm to crack shells.")),
    InlineDocument(id="bees", title="Honey bees", text=(
        "Honey bees tell each other where flowers are with a waggle dance. "
        "The angle of the dance points the way relative to the sun.")),
    InlineDocument(id="tides", title="Tides", text=(
        "Tides are caused mainly by the pull of the moon on the oceans. "
        "Spring tides happen when the sun and the moon line up.")),
]
GOLDEN = [
    {"id": "otters", "question": "Why do sea otters hold hands while sleeping?",
     "relevant": ["otters"]},
    {"id": "bees", "question": "How do honey bees show where flowers are?",
     "relevant": {"bees": 2}},
    {"id": "tides", "question": "What causes the tides in the oceans?", "relevant": ["tides"]},
    {"id": "absent", "question": "Who painted the ceiling of the Sistine Chapel?",
     "answerable": False},
]


async def _ragbus(nats_url: str, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "RAGBUS_NATS__URL": nats_url, "RAGBUS_LOGGING__FORMAT": "json"}
    with anyio.fail_after(300):
        done = await anyio.run_process([*RAGBUS, *args], env=env, check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


@pytest.fixture
def golden(tmp_path: Path) -> Path:
    path = tmp_path / "golden.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in GOLDEN))
    return path


async def test_eval_scores_the_running_system_and_gates_on_thresholds(
        nats_url: str, nc: NATS, tmp_path: Path, golden: Path) -> None:
    judge = FakeOpenAI(Behaviour(tokens=("SCORE", ": 4")))  # an LLM judge, scripted
    await judge.start()
    settings = Settings(
        nats=NatsSettings(url=nats_url), data_dir=str(tmp_path),
        runtime=RuntimeSettings(default_timeout_s=30),
        retriever=RetrieverSettings(data_dir=str(tmp_path / "qdrant")),
        ingestor=IngestorSettings(progress_interval_ms=0),
        router=RouterSettings(providers=[
            ProviderSettings(name="judge", base_url=judge.base_url, model="judge-model"),
            ProviderSettings(name="extractive", kind="extractive")]),
    )
    out = tmp_path / "run.jsonl"
    try:
        async with running(Embedder(settings), Retriever(settings), Ingestor(settings),
                           ContextTrimmer(settings), Router(settings)):
            job = IngestRequest(documents=DOCS)
            await submit_job(nc, job)
            final = [p async for p in follow_job(nc, job.job_id, timeout_s=60)][-1]
            assert final.state == JobState.SUCCEEDED
            passed = await _ragbus(nats_url, "eval", str(golden), "--out", str(out), "--json",
                                   "--provider", "extractive", "--judge", "judge",
                                   "--min-recall-at-10", "1", "--min-citation-valid", "1",
                                   "--min-grounded", "0.9", "--min-mrr", "0.5",
                                   "--min-judge-grounded", "0.7")
            failed = await _ragbus(nats_url, "eval", str(golden), "--provider", "extractive",
                                   "--min-refusal-correct", "0.5", "--min-judge-grounded",
                                   "0.5", "--min-precision-at-5", "0.7",
                                   "--min-recall-at-10", "1")
    finally:
        await judge.stop()
    judged = judge.chat_requests
    code, stdout, stderr = passed
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["questions"] == 4
    assert summary["failed"] == 0
    # three documents, ten sources asked: every relevant one comes back, one per question
    assert summary["recall_at_10"] == 1.0
    assert summary["precision_at_5"] == pytest.approx(1 / 5)
    assert summary["citation_valid"] == 1.0
    assert summary["cited_sentences"] == 1.0
    # the extractive provider quotes the passages it cites
    assert summary["grounded"] == 1.0
    # it refuses the question about a painter (no passage mentions painting or chapels)
    # and none of the three it can answer
    assert summary["refusal_correct"] == 1.0
    assert summary["false_refusals"] == 0.0
    assert summary["providers"] == {"extractive": 4}
    # the judge graded each of the three answers twice (grounded, relevance): 4 of 5
    assert len(judged) == 6
    assert summary["judge_grounded"] == 0.75
    assert summary["judge_relevance"] == 0.75
    results, saved = read_results(out)
    assert [r.id for r in results] == ["otters", "bees", "tides", "absent"]
    assert saved.grounded == 1.0
    otters = results[0]
    assert otters.docs[0] == "otters"
    assert "hold hands" in otters.answer
    assert otters.answer_relevance is not None
    assert otters.answer_relevance > 0.5
    assert results[3].refused is True
    assert results[3].refusal_correct is True
    assert results[3].answer.startswith("I do not know")
    assert results[3].grounded is None  # answers to unanswerable questions are not scored
    assert results[3].judge_grounded is None
    assert otters.judge_grounded == 0.75

    code, stdout, stderr = failed
    assert code == 1
    assert "precision_at_5 0.2000 < 0.7" in stderr
    assert "recall_at_10" not in stderr  # met
    assert "refusal_correct" not in stderr  # met
    assert "judge_grounded was not measured" in stderr  # no --judge: a gate on it misses


async def test_compare_prints_the_difference_without_nats(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"type": "question", "id": "q", "question": "?", "answerable": true}\n'
                 '{"type": "summary", "questions": 1, "answerable": 1, "unanswerable": 0, '
                 '"failed": 0, "mrr": 0.5, "grounded": 0.25}\n')
    b.write_text('{"type": "summary", "questions": 1, "answerable": 1, "unanswerable": 0, '
                 '"failed": 0, "mrr": 1.0}\n')
    # no NATS anywhere: the URL names a closed port, and --compare must not need it
    code, stdout, stderr = await _ragbus("nats://127.0.0.1:1", "eval", "--compare", str(a),
                                         str(b), "--json")
    assert code == 0, stderr
    rows = json.loads(stdout)
    assert rows["mrr"] == {"a": 0.5, "b": 1.0, "diff": 0.5}
    assert rows["grounded"] == {"a": 0.25, "b": None, "diff": None}


async def test_a_malformed_golden_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "fine"}\n{"question": "broken",\n')
    code, _, stderr = await _ragbus("nats://127.0.0.1:1", "eval", str(path))
    assert code == 2
    assert f"{path}:2:" in stderr
