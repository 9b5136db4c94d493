"""Typed settings: defaults < TOML file < ``RAGBUS_*`` environment variables."""

from ._errors import ConfigError, ProductionConfigError
from ._loader import ENV_PREFIX, Loaded, load_settings, production_problems
from ._secret import MASK, Secret
from ._settings import (
    BridgeSettings,
    LoggingSettings,
    MetricsSettings,
    NatsSettings,
    RuntimeSettings,
    Settings,
)

__all__ = (
    "ENV_PREFIX",
    "MASK",
    "BridgeSettings",
    "ConfigError",
    "Loaded",
    "LoggingSettings",
    "MetricsSettings",
    "NatsSettings",
    "ProductionConfigError",
    "RuntimeSettings",
    "Secret",
    "Settings",
    "load_settings",
    "production_problems",
)
