"""The kernel every actor stands on: the actor base, NATS, JetStream set-up, logs, metrics.

Below it: ``subjects`` (the wire contract) and ``config`` (typed settings). Above it:
``actors``. ``runtime.text`` holds the text tools several actors share, and
``runtime.cli`` the command line and process hosting: the only part of ``runtime``
that may import ``actors``.
"""

from . import codec, tracing
from ._discovery import discover, wait_for_instances
from ._percentile import percentile
from .actor import Actor, ActorOptions, Context, Durable, EndpointSpec, endpoint
from .admission import AdaptiveLimit
from .audit import AuditPublisher, ensure_audit_stream
from .client import ACCEPT_WAIT_S, Client, EventStream, decode_reply
from .connection import connect
from .errors import (
    BadRequestError,
    DeadlineExceededError,
    ForbiddenError,
    InternalError,
    NotFoundError,
    OverloadedError,
    RagbusError,
    RateLimitedError,
    RequestCancelledError,
    TooLargeError,
    UnauthorizedError,
    UnavailableError,
    UnsupportedVersionError,
    error_from_reply,
)
from .jetstream import (
    best_effort,
    ensure_kv,
    ensure_object_store,
    ensure_stream,
    kv_entries,
    read_stream,
)
from .logs import SecretMasker, configure_logging, get_logger
from .metrics import Metrics
from .security import connect_as, credentials
from .supervisor import Supervisor
from .worker import WorkerThread

__all__ = (
    "ACCEPT_WAIT_S",
    "Actor",
    "ActorOptions",
    "AdaptiveLimit",
    "AuditPublisher",
    "BadRequestError",
    "Client",
    "Context",
    "DeadlineExceededError",
    "Durable",
    "EndpointSpec",
    "EventStream",
    "ForbiddenError",
    "InternalError",
    "Metrics",
    "NotFoundError",
    "OverloadedError",
    "RagbusError",
    "RateLimitedError",
    "RequestCancelledError",
    "SecretMasker",
    "Supervisor",
    "TooLargeError",
    "UnauthorizedError",
    "UnavailableError",
    "UnsupportedVersionError",
    "WorkerThread",
    "best_effort",
    "codec",
    "configure_logging",
    "connect",
    "connect_as",
    "credentials",
    "decode_reply",
    "discover",
    "endpoint",
    "ensure_audit_stream",
    "ensure_kv",
    "ensure_object_store",
    "ensure_stream",
    "error_from_reply",
    "get_logger",
    "kv_entries",
    "percentile",
    "read_stream",
    "tracing",
    "wait_for_instances",
)
