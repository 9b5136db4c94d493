"""The WebSocket bridge: a browser page and a JSON protocol to ask, stream and stop."""

from ._actor import WS_PATH, Bridge, page_url, ws_url
from ._auth import Authenticator, Identity
from ._errors import (
    AuthDeniedError,
    CannotListenError,
    CertificateUnusableError,
    OriginNotAllowedError,
    UnauthenticatedError,
)
from ._limits import FIRST_ASK_ESTIMATE_S, Denied, LimitState, RateLimits
from ._protocol import (
    AskFrame,
    AuthFrame,
    CancelFrame,
    CancelledFrame,
    ClientFrame,
    CloseCode,
    DoneFrame,
    ErrorFrame,
    FailedFrame,
    LimitsFrame,
    ReadyFrame,
    ServerFrame,
    SourcesFrame,
    StatusFrame,
    StatusRequest,
    TokenFrame,
)

__all__ = (
    "FIRST_ASK_ESTIMATE_S",
    "WS_PATH",
    "AskFrame",
    "AuthDeniedError",
    "AuthFrame",
    "Authenticator",
    "Bridge",
    "CancelFrame",
    "CancelledFrame",
    "CannotListenError",
    "CertificateUnusableError",
    "ClientFrame",
    "CloseCode",
    "Denied",
    "DoneFrame",
    "ErrorFrame",
    "FailedFrame",
    "Identity",
    "LimitState",
    "LimitsFrame",
    "OriginNotAllowedError",
    "RateLimits",
    "ReadyFrame",
    "ServerFrame",
    "SourcesFrame",
    "StatusFrame",
    "StatusRequest",
    "TokenFrame",
    "UnauthenticatedError",
    "page_url",
    "ws_url",
)
