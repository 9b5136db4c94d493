"""Who is on a socket: an API key, an HS256 JWT, or (in development) nobody in particular.

Credentials come from a header (``Authorization: Bearer …`` or ``X-API-Key``),
from ``?token=`` (browsers cannot set headers on a WebSocket), or from a first
``auth`` frame. A presented credential that does not verify is refused even
where anonymous use is allowed: a typo should fail loudly, not downgrade.
The identity never contains a credential, so it can be logged, audited and
used to key rate limits and conversation sessions.
"""

from __future__ import annotations

import hashlib
import hmac
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import jwt

from ragbus.config import BridgeSettings

from ._errors import OriginNotAllowedError, UnauthenticatedError

__all__ = ("LOOPBACK_HOSTS", "Authenticator", "Identity", "Method")

Method = Literal["api_key", "jwt", "anonymous"]


@dataclass(frozen=True, slots=True)
class Identity:
    """``key`` is ``key:<hash>``, ``jwt:<subject>`` or ``anon:<address>``."""

    key: str
    method: Method
    expires_at: int | None = None  # epoch seconds (a JWT's ``exp``)


def _fingerprint(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]


#: bind addresses only this machine can reach
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class Authenticator:
    def __init__(self, config: BridgeSettings, *, development: bool) -> None:
        self.config = config
        self.development = development
        self._keys = [k.get().encode() for k in config.api_keys if k.get()]
        self._jwt_secret = config.jwt_secret.get() if config.jwt_secret else None
        self._any_origin = development and "*" in config.allowed_origins
        self._origins = set(config.allowed_origins)

    def allow_own_origin(self, host: str, port: int, scheme: str = "http") -> None:
        """Allow the page this bridge serves itself, at the address it is bound to.

        Safe against DNS rebinding: a rebinding page's origin names the attacker's
        host, never this literal address. A wildcard bind address names no page, so
        nothing is added for it.
        """
        if host in ("", "0.0.0.0", "::"):
            return
        if host in LOOPBACK_HOSTS:
            names = ["127.0.0.1", "localhost", "[::1]"]
        else:
            names = [f"[{host}]" if ":" in host else host]
        self._origins.update(f"{scheme}://{name}:{port}" for name in names)

    @property
    def weak_jwt_secret(self) -> bool:
        """RFC 7518 wants an HS256 key of at least 32 bytes."""
        return self._jwt_secret is not None and len(self._jwt_secret.encode()) < 32

    @property
    def anonymous_allowed(self) -> bool:
        """Anonymous sockets: development only, and only if ``bridge.allow_anonymous``."""
        return self.development and self.config.allow_anonymous

    def check_origin(self, origin: str | None) -> None:
        """Refuse a browser page from an origin not listed (exact match).

        A missing ``Origin`` is a non-browser client: it carries no ambient
        credentials a foreign page could borrow, so only its own credentials count.
        """
        if origin is None or self._any_origin or origin in self._origins:
            return
        raise OriginNotAllowedError(
            f"origin {origin[:60]} is not allowed: add it to bridge.allowed_origins")

    def presented(self, headers: Mapping[str, str], path: str) -> str | None:
        """The credential the handshake carries, or None if it carries none."""
        auth = headers.get("Authorization")
        if auth:
            scheme, _, value = auth.partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                return value.strip()
        key = headers.get("X-API-Key")
        if key and key.strip():
            return key.strip()
        tokens = parse_qs(urlsplit(path).query).get("token")
        if tokens and tokens[0]:
            return tokens[0]
        return None

    def verify(self, credential: str) -> Identity:
        """The identity a credential proves, or :class:`UnauthenticatedError` saying why not."""
        given = credential.encode("utf-8", "surrogatepass")
        # compare against every key, so the time taken says nothing about which matched
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(given, key)
        if matched:
            return Identity(key=f"key:{_fingerprint(credential)}", method="api_key")
        if self._jwt_secret is not None and credential.count(".") == 2:
            return self._verify_jwt(credential)
        if not self._keys and self._jwt_secret is None:
            raise UnauthenticatedError("credentials were sent but the bridge has none configured: "
                                  "connect without a token (development)", method="api_key")
        raise UnauthenticatedError("unknown API key or malformed token", method="api_key")

    def _verify_jwt(self, token: str) -> Identity:
        assert self._jwt_secret is not None
        try:
            with warnings.catch_warnings():
                # a short secret is reported once, at start (see Bridge), not per socket
                warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
                claims: dict[str, Any] = jwt.decode(
                    token, self._jwt_secret, algorithms=["HS256"],
                    audience=self.config.jwt_audience, leeway=self.config.jwt_leeway_s,
                    options={"require": ["exp"]})
        except jwt.ExpiredSignatureError:
            raise UnauthenticatedError("token expired: get a new one", method="jwt") from None
        except jwt.InvalidAudienceError:
            raise UnauthenticatedError(f"token audience is not {self.config.jwt_audience!r}",
                                  method="jwt") from None
        except jwt.MissingRequiredClaimError as exc:
            raise UnauthenticatedError(f"token has no {exc.claim!r} claim", method="jwt") from None
        except jwt.ImmatureSignatureError:
            raise UnauthenticatedError("token is not valid yet (nbf)", method="jwt") from None
        except jwt.InvalidTokenError:
            raise UnauthenticatedError("invalid token: bad signature or not HS256", method="jwt") \
                from None
        subject = claims.get("sub")
        who = subject if isinstance(subject, str) and subject else _fingerprint(token)
        exp = claims["exp"]
        return Identity(key=f"jwt:{who[:128]}", method="jwt",
                        expires_at=int(exp) if isinstance(exp, int | float) else None)

    def anonymous(self, address: str) -> Identity:
        if not self.anonymous_allowed:
            raise UnauthenticatedError("credentials required: send an API key or JWT")
        return Identity(key=f"anon:{address}", method="anonymous")
