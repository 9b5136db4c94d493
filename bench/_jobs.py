"""Ingesting a benchmark's corpus before it measures anything."""

from __future__ import annotations

from ragbus.runtime.cli import follow_job, submit_job
from ragbus.runtime.connection import NATS
from ragbus.subjects import IngestRequest, JobProgress, JobState

__all__ = ("ingested",)


async def ingested(nc: NATS, request: IngestRequest, *, timeout_s: float = 300.0
                   ) -> JobProgress:
    """Submit ``request`` and follow it to its end: its last progress, or SystemExit with
    the job's message unless it succeeded (a figure over a half-ingested corpus is wrong,
    not slow)."""
    await submit_job(nc, request)
    final = [p async for p in follow_job(nc, request.job_id, timeout_s=timeout_s)][-1]
    if final.state != JobState.SUCCEEDED:
        raise SystemExit(f"ingestion failed: {final.message}")
    return final
