"""Where the benchmark data lives: the BEIR SciFact set beside the checkout."""

from __future__ import annotations

from pathlib import Path

__all__ = ("SCIFACT",)

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "beir-scifact"
