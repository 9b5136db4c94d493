"""Why settings could not be loaded."""

from __future__ import annotations

__all__ = ("ConfigError", "ProductionConfigError")


class ConfigError(ValueError):
    """A setting is missing, unknown or of the wrong type; the message names key and source."""


class ProductionConfigError(ConfigError):
    """``environment = "production"`` refuses to start with an unsafe configuration."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        listing = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"refusing to start in production:\n{listing}")
