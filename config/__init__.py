"""Typed settings: defaults < TOML file < ``RAGBUS_*`` environment variables."""

from ._audit import AUDIT_PUBLISHERS, ROLES, AuditSettings, SecuritySettings
from ._errors import ConfigError, ProductionConfigError
from ._evaluation import DEFAULT_REFUSAL_PHRASES, EvaluationSettings
from ._loader import ENV_PREFIX, Loaded, load_settings, production_problems
from ._router import (
    HttpStack,
    LocalLLMSettings,
    PromptTemplate,
    ProviderSettings,
    RouterSettings,
)
from ._secret import MASK, Secret, secret_values
from ._settings import (
    IN_MEMORY,
    BridgeSettings,
    EmbedderSettings,
    IngestorSettings,
    LoggingSettings,
    MetricsSettings,
    NatsSettings,
    RetrieverSettings,
    RuntimeSettings,
    Settings,
    default_data_dir,
)
from ._trimmer import Compression, TrimmerSettings

__all__ = (
    "AUDIT_PUBLISHERS",
    "DEFAULT_REFUSAL_PHRASES",
    "ENV_PREFIX",
    "IN_MEMORY",
    "MASK",
    "ROLES",
    "AuditSettings",
    "BridgeSettings",
    "Compression",
    "ConfigError",
    "EmbedderSettings",
    "EvaluationSettings",
    "HttpStack",
    "IngestorSettings",
    "Loaded",
    "LocalLLMSettings",
    "LoggingSettings",
    "MetricsSettings",
    "NatsSettings",
    "ProductionConfigError",
    "PromptTemplate",
    "ProviderSettings",
    "RetrieverSettings",
    "RouterSettings",
    "RuntimeSettings",
    "Secret",
    "SecuritySettings",
    "Settings",
    "TrimmerSettings",
    "default_data_dir",
    "load_settings",
    "production_problems",
    "secret_values",
)
