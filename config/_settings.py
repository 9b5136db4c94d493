"""The typed settings tree: one section per concern, one per actor as actors arrive.

Every struct forbids unknown fields so a typo in a TOML file or an environment
variable is an error that names the key, not a silently ignored setting.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from ._secret import Secret

__all__ = (
    "BridgeSettings",
    "LoggingSettings",
    "MetricsSettings",
    "NatsSettings",
    "RuntimeSettings",
    "Settings",
)

Positive = Annotated[float, Meta(gt=0)]
PositiveInt = Annotated[int, Meta(ge=1)]
Port = Annotated[int, Meta(ge=0, le=65535)]


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class NatsSettings(_Section, frozen=True, kw_only=True):
    """Where the bus is. No ``url`` means: start a private nats-server (embedded mode)."""

    url: str | None = None
    user: str | None = None
    password: Secret | None = None
    token: Secret | None = None
    creds_file: str | None = None
    connect_timeout_s: Positive = 2.0
    # bounded so a dead server fails fast instead of nats-py's ~120 s default
    max_reconnect_attempts: int = 30
    reconnect_time_wait_s: Positive = 0.5
    # embedded server only
    data_dir: str | None = None
    ephemeral: bool = False
    max_payload_bytes: PositiveInt = 8 * 1024 * 1024

    @property
    def has_credentials(self) -> bool:
        return bool(self.creds_file or self.token or (self.user and self.password))


class RuntimeSettings(_Section, frozen=True, kw_only=True):
    """How every actor handles messages."""

    concurrency: PositiveInt = 64
    max_message_bytes: PositiveInt = 1024 * 1024
    default_timeout_s: Positive = 30.0
    drain_grace_s: Annotated[float, Meta(ge=0)] = 10.0
    restart_backoff_initial_s: Positive = 0.5
    restart_backoff_max_s: Positive = 30.0


class LoggingSettings(_Section, frozen=True, kw_only=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class MetricsSettings(_Section, frozen=True, kw_only=True):
    """Prometheus exposition; port 0 picks a free port (printed by ``ragbus up``)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 9464


class BridgeSettings(_Section, frozen=True, kw_only=True):
    """The browser-facing WebSocket bridge: its auth secrets are checked at start."""

    host: str = "127.0.0.1"
    port: Port = 8765
    api_keys: list[Secret] = msgspec.field(default_factory=list)
    jwt_secret: Secret | None = None
    jwt_audience: str = "ragbus"
    allowed_origins: list[str] = msgspec.field(
        default_factory=lambda: ["http://127.0.0.1:8765", "http://localhost:8765"]
    )


class Settings(_Section, frozen=True, kw_only=True):
    environment: Literal["development", "production"] = "development"
    subject_prefix: str = "rag"
    data_dir: str | None = None
    nats: NatsSettings = msgspec.field(default_factory=NatsSettings)
    runtime: RuntimeSettings = msgspec.field(default_factory=RuntimeSettings)
    logging: LoggingSettings = msgspec.field(default_factory=LoggingSettings)
    metrics: MetricsSettings = msgspec.field(default_factory=MetricsSettings)
    bridge: BridgeSettings = msgspec.field(default_factory=BridgeSettings)
