"""Submitting ingest jobs and following their progress, for the CLI and any Python client."""

from __future__ import annotations

from ..ingest import follow_job, submit_job

__all__ = ("follow_job", "submit_job")
