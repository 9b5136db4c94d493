"""Typed settings: defaults < TOML file < ``RAGBUS_*`` environment variables."""

from ._errors import ConfigError, ProductionConfigError
from ._loader import ENV_PREFIX, Loaded, load_settings, production_problems
from ._secret import MASK, Secret
from ._settings import (
    BridgeSettings,
    EmbedderSettings,
    IngestorSettings,
    LoggingSettings,
    MetricsSettings,
    NatsSettings,
    RetrieverSettings,
    RuntimeSettings,
    Settings,
)

__all__ = (
    "ENV_PREFIX",
    "MASK",
    "BridgeSettings",
    "ConfigError",
    "EmbedderSettings",
    "IngestorSettings",
    "Loaded",
    "LoggingSettings",
    "MetricsSettings",
    "NatsSettings",
    "ProductionConfigError",
    "RetrieverSettings",
    "RuntimeSettings",
    "Secret",
    "Settings",
    "load_settings",
    "production_problems",
)
