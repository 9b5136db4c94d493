"""Tests that need a tool the test command does not always have (Chromium, promtool, the
local LLM): on a workstation without it they skip; in CI, which installs them, a missing
one fails, so a broken install cannot pass as a skip."""

from __future__ import annotations

import os

import pytest

__all__ = ("STRICT", "require")

#: set by .ci/run (not a RAGBUS_ name: the settings loader takes those for settings)
STRICT = "CI_STRICT"


def require(available: bool, what: str, install: str) -> None:
    """Skip (or, in CI, fail) the calling test unless ``available``."""
    if available:
        return
    if os.environ.get(STRICT) == "1":
        pytest.fail(f"{what} is missing in CI, which installs it: {install}")
    pytest.skip(f"{what} is not installed ({install}); CI installs it")
