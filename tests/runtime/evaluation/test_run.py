"""``evaluate`` over the real query path with an LLM's answers scripted on the loopback
fake OpenAI server: the answer scores on answers whose faults are known."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragbus.actors.embedder import Embedder
from ragbus.actors.ingestor import Ingestor
from ragbus.actors.retriever import Retriever
from ragbus.actors.router import Router
from ragbus.actors.trimmer import ContextTrimmer
from ragbus.config import (
    EvaluationSettings,
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
from ragbus.runtime.evaluation import GoldenQuestion, evaluate, summarize
from ragbus.subjects import IngestRequest, InlineDocument, JobState, Subjects
from tests.support import running
from tests.support.fake_openai import Behaviour, FakeOpenAI

OTTERS = "Sea otters hold hands while they sleep so that they do not drift apart."
DOCS = [
    InlineDocument(id="otters", title="Sea otters", text=(
        f"{OTTERS} They keep a favourite rock in a pouch under the arm to crack shells.")),
    InlineDocument(id="bees", title="Honey bees", text=(
        "Honey bees tell each other where flowers are with a waggle dance.")),
]
QUESTIONS = [
    GoldenQuestion(id="otters", question="Why do sea otters hold hands while sleeping?",
                   relevant={"otters": 1}),
    GoldenQuestion(id="absent", question="Who painted the Sistine Chapel ceiling?",
                   answerable=False),
]
# one sentence quoted from passage [1], one citing [1] that no passage supports, one
# citing a passage that does not exist (two documents: two passages)
MIXED = (OTTERS[:30], OTTERS[30:-1], " [1]. The moon is made of ", "green cheese [1]. ",
         "Otters are fond of jazz [7].")
REFUSAL = ("I do not know: ", "the context does not say.")


async def test_answer_scores_of_a_scripted_llm(nats_url: str, nc: NATS, tmp_path: Path) -> None:
    async with FakeOpenAI() as fake:
        settings = Settings(
            nats=NatsSettings(url=nats_url), data_dir=str(tmp_path),
            runtime=RuntimeSettings(default_timeout_s=30),
            retriever=RetrieverSettings(data_dir=str(tmp_path / "qdrant")),
            ingestor=IngestorSettings(progress_interval_ms=0),
            router=RouterSettings(providers=[
                ProviderSettings(name="llm", base_url=fake.base_url, model="fake-model"),
                ProviderSettings(name="extractive", kind="extractive")]),
        )
        fake.script(Behaviour(tokens=MIXED), Behaviour(tokens=REFUSAL))
        evaluation = EvaluationSettings(timeout_s=30)
        async with running(Embedder(settings), Retriever(settings), Ingestor(settings),
                           ContextTrimmer(settings), Router(settings)):
            job = IngestRequest(documents=DOCS)
            await submit_job(nc, job)
            final = [p async for p in follow_job(nc, job.job_id, timeout_s=60)][-1]
            assert final.state == JobState.SUCCEEDED
            results = [r async for r in evaluate(nc, Subjects(), QUESTIONS, evaluation,
                                                 provider="llm")]
    otters, absent = results
    assert otters.provider == "llm"
    assert otters.docs[0] == "otters"
    assert otters.answer == "".join(MIXED).strip()
    assert otters.citation_valid is False        # [7]: two passages only
    assert otters.cited_sentences == 1.0         # every sentence cites something
    assert otters.grounded == pytest.approx(1 / 3)  # only the quoted sentence is supported
    assert otters.answer_relevance is not None
    assert 0 < otters.answer_relevance < 1
    assert otters.refused is False
    assert otters.refusal_correct is None        # it has an answer in the corpus
    assert absent.refused is True
    assert absent.refusal_correct is True
    assert absent.grounded is None
    summary = summarize(results, evaluation)
    assert summary.refusal_correct == 1.0
    assert summary.grounded == pytest.approx(1 / 3)
    assert summary.citation_valid == 0.0
    assert summary.mrr == 1.0
    assert len(fake.chat_requests) == 2
