"""What every actor stands on: the actor base, NATS, JetStream set-up, logs, metrics."""

from ._status import discover
from .actor import Actor, Context, EndpointSpec, endpoint
from .audit import AuditPublisher, ensure_audit_stream
from .client import Client, decode_reply
from .connection import connect
from .errors import (
    BadRequest,
    Cancelled,
    DeadlineExceeded,
    Forbidden,
    InternalError,
    NotFound,
    Overloaded,
    RagbusError,
    RateLimited,
    TooLarge,
    Unauthorized,
    Unavailable,
    UnsupportedVersion,
    error_from_reply,
)
from .jetstream import ensure_kv, ensure_stream, kv_entries
from .logs import SecretMasker, configure_logging, get_logger
from .metrics import Metrics
from .security import connect_as, credentials, secret_values
from .server import EmbeddedNats, NatsServerError, default_data_dir, find_nats_server
from .supervisor import Supervisor
from .worker import WorkerThread

__all__ = (
    "Actor",
    "AuditPublisher",
    "BadRequest",
    "Cancelled",
    "Client",
    "Context",
    "DeadlineExceeded",
    "EmbeddedNats",
    "EndpointSpec",
    "Forbidden",
    "InternalError",
    "Metrics",
    "NatsServerError",
    "NotFound",
    "Overloaded",
    "RagbusError",
    "RateLimited",
    "SecretMasker",
    "Supervisor",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "UnsupportedVersion",
    "WorkerThread",
    "configure_logging",
    "connect",
    "connect_as",
    "credentials",
    "decode_reply",
    "default_data_dir",
    "discover",
    "endpoint",
    "ensure_audit_stream",
    "ensure_kv",
    "ensure_stream",
    "error_from_reply",
    "find_nats_server",
    "get_logger",
    "kv_entries",
    "secret_values",
)
