"""bench.chaos's ingest load: jobs adding and changing documents, checked on every replica.

Jobs go through the ingestor one after another (``submit_job``/``follow_job``, as
``ragbus ingest`` does), each adding new documents or re-ingesting some with changed
text, so the last version submitted of each document is what every retriever replica
must hold once the jobs are done. The check reads each stopped replica's copy and
chunks each document's last text as the ingestor does (``chunk_text`` with the
ingestor's settings): a chunk of it a replica does not hold live is lost; a live
chunk of a tracked document that is not one of those (an old version's, or one held
twice) is a duplicate.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from ragbus.actors.ingestor import ChunkingConfig, chunk_text
from ragbus.config import IngestorSettings
from ragbus.runtime.cli import follow_job, submit_job
from ragbus.runtime.connection import NATS
from ragbus.subjects import IngestRequest, InlineDocument, JobProgress, JobState
from tests.support.stores import held

__all__ = ("IngestLoad", "check_copy", "chunk_shas")

_WORDS = ("orchard", "beetle", "survey", "meadow", "river", "hollow", "lantern", "winter",
          "burrow", "thicket", "pollen", "marsh", "ridge", "field", "nest", "season")


def _text(rng: random.Random, doc: str, revision: int, sentences: int) -> str:
    """Made-up prose, long enough for a few chunks; ``revision`` changes every chunk."""
    out = []
    for i in range(sentences):
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(8, 16)))
        out.append(f"Note {i} on {doc}, revision {revision}: the {words}.")
    return " ".join(out)


@dataclass
class IngestLoad:
    """Jobs, one after another, for as long as ``run`` runs; ``last`` is what was
    submitted last for each document, ``jobs`` how each job ended."""

    nc: NATS
    docs_per_job: int = 6
    sentences: int = 40
    timeout_s: float = 300.0
    last: dict[str, InlineDocument] = field(default_factory=dict)
    jobs: dict[str, JobProgress | None] = field(default_factory=dict)
    #: the job running now (its id), while one runs: the ingestor's kill waits for one
    running: str | None = None
    changed: anyio.Event = field(default_factory=anyio.Event)
    stopping: bool = False

    async def run(self, seed: int = 19) -> None:
        """Until ``stop``: alternately add new documents and change some already in."""
        rng = random.Random(seed)
        n = 0
        while not self.stopping:
            if n % 2 == 0 or not self.last:
                ids = [f"note-{len(self.last) + i}" for i in range(self.docs_per_job)]
            else:
                ids = rng.sample(sorted(self.last), min(self.docs_per_job, len(self.last)))
            docs = []
            for doc_id in ids:
                old = self.last.get(doc_id)
                revision = 0 if old is None else int(old.metadata["revision"]) + 1
                docs.append(InlineDocument(id=doc_id, title=f"Notes {doc_id}",
                                           text=_text(rng, doc_id, revision, self.sentences),
                                           metadata={"revision": revision}))
            await self.one(IngestRequest(documents=docs))
            n += 1

    async def one(self, job: IngestRequest) -> None:
        self.jobs[job.job_id] = None
        for doc in job.documents:
            self.last[doc.id] = doc
        await submit_job(self.nc, job)
        final: JobProgress | None = None
        with anyio.move_on_after(self.timeout_s):
            while final is None or final.state not in (JobState.SUCCEEDED, JobState.FAILED):
                try:  # a follower's bucket read fails while the cluster elects: follow again
                    async for progress in follow_job(self.nc, job.job_id,
                                                     timeout_s=self.timeout_s):
                        final = progress
                        if progress.state == JobState.RUNNING and self.running is None:
                            self.running = job.job_id
                            self.changed.set()
                except Exception:  # any bus error: read the job again
                    await anyio.sleep(0.5)
        self.jobs[job.job_id] = final
        self.running = None

    async def running_job(self) -> str:
        """The id of a job the ingestor is working on, as soon as there is one."""
        while self.running is None:
            self.changed = anyio.Event()
            await self.changed.wait()
        return self.running

    def ended(self) -> Counter[str]:
        return Counter("timed out" if p is None else p.state.value for p in self.jobs.values())


def chunk_shas(text: str, settings: IngestorSettings | None = None) -> set[str]:
    """The chunks the ingestor makes of ``text``, by digest (inline documents are plain
    text, not markdown)."""
    s = settings or IngestorSettings()
    config = ChunkingConfig(chunk_tokens=s.chunk_tokens, overlap_tokens=s.overlap_tokens,
                            parent_tokens=s.parent_tokens)
    return {c.sha256 for c in chunk_text(text, config).chunks}


def check_copy(data_dir: Path, last: dict[str, InlineDocument]) -> tuple[int, int, int]:
    """(chunks expected, lost, duplicated) in a stopped replica's copy of the shard."""
    live: dict[str, Counter[str]] = {}
    for payload in held(data_dir).values():
        doc_id = str(payload.get("doc_id"))
        if doc_id in last and not payload.get("deleted"):
            live.setdefault(doc_id, Counter())[str(payload.get("chunk_sha256"))] += 1
    expected = lost = dup = 0
    for doc_id, doc in last.items():
        want = chunk_shas(doc.text)
        have = live.get(doc_id, Counter())
        expected += len(want)
        lost += len(want - set(have))
        # a chunk's point id is its document's and digest's: a count over 1 cannot
        # happen unless ids stopped being deterministic
        dup += sum(n if sha not in want else n - 1 for sha, n in have.items())
    return expected, lost, dup
