"""Why a socket was refused; each reason is sent as the close reason, so it says what to do."""

from __future__ import annotations

from ._protocol import CloseCode

__all__ = ("AuthDeniedError", "CannotListenError", "CertificateUnusableError",
           "OriginNotAllowedError", "UnauthenticatedError")

_MAX_REASON_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes


class AuthDeniedError(Exception):
    """The socket may not be used; it is closed with :attr:`code` and the message."""

    code: CloseCode = CloseCode.UNAUTHORIZED
    audit_code = "UNAUTHORIZED"
    label = "unauthorized"  # in metrics

    def __init__(self, reason: str, *, method: str = "none") -> None:
        super().__init__(reason)
        self.reason = reason
        self.method = method

    @property
    def close_reason(self) -> str:
        """The reason cut to what fits in a close frame."""
        raw = self.reason.encode("utf-8")
        if len(raw) <= _MAX_REASON_BYTES:
            return self.reason
        return raw[:_MAX_REASON_BYTES].decode("utf-8", "ignore")


class UnauthenticatedError(AuthDeniedError):
    """No credentials where they are required, or ones that do not verify."""


class OriginNotAllowedError(AuthDeniedError):
    """The page that opened the socket is not served from an allowed origin."""

    code = CloseCode.FORBIDDEN
    audit_code = "FORBIDDEN"
    label = "forbidden"


class CannotListenError(OSError):
    """The configured address cannot be bound (in use, or not this machine's)."""


class CertificateUnusableError(ValueError):
    """``bridge.tls_cert``/``bridge.tls_key`` cannot be read or do not belong together."""
