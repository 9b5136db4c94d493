"""The bridge: a WebSocket server for browsers and apps that is a NATS client.

It is an :class:`~runtime.Actor` without endpoints, so ``ragbus up`` supervises
it, ``ragbus status`` and ``/readyz`` find it, and it stops like every actor. One
port serves the page, ``/healthz``, ``/readyz`` and the WebSocket (``/ws``); the next
one ``POST /upload`` (``_upload.py``: the WebSocket server speaks only GET).
Every ask becomes a ``Query`` whose events it reads like any client would
(``runtime.Client.open_stream``), so deadlines, cancels and "nobody serves
queries" are handled in one place for the bridge, ``ragbus ask`` and any requester.
"""

from __future__ import annotations

import http
import math
import ssl
from typing import Unpack

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from prometheus_client import Counter, Gauge, Histogram
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from ragbus.config import BridgeSettings, Settings
from ragbus.runtime import Actor, ActorOptions, Client
from ragbus.runtime.audit import AuditPublisher
from ragbus.subjects import AuditKind, AuditOutcome, limits_bucket

from ._auth import LOOPBACK_HOSTS, Authenticator
from ._errors import AuthDeniedError, CannotListenError, CertificateUnusableError
from ._http import load_pages, response
from ._limits import Denied, RateLimits
from ._readiness import ReadinessProbe
from ._session import Ask, Session
from ._upload import UPLOAD_PATH, UploadServer

__all__ = ("Bridge",)

_TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                 30.0)
WS_PATH = "/ws"


class Bridge(Actor):
    """Relays questions from WebSockets to the query path and its events back."""

    name = "bridge"

    def __init__(self, settings: Settings | None = None,
                 **options: Unpack[ActorOptions]) -> None:
        super().__init__(settings, **options)
        self.config = self.settings.bridge
        self.auth = Authenticator(self.config,
                                  development=self.settings.environment == "development")
        self._limits: RateLimits | None = None
        # asks end in synchronous code; their places are written back from one task
        self._releases: tuple[MemoryObjectSendStream[str], MemoryObjectReceiveStream[str]] = (
            anyio.create_memory_object_stream[str](math.inf))
        self.readiness = ReadinessProbe(self.config.ready_actors, wait_s=self.config.ready_wait_s)
        self.pages = load_pages()
        self.open_asks: dict[str, Ask] = {}
        self.sessions: set[Session] = set()
        self.accepting = False
        self.port: int | None = None
        secrets = [k.get() for k in self.config.api_keys]
        if self.config.jwt_secret is not None:
            secrets.append(self.config.jwt_secret.get())
        self.audit = AuditPublisher(self.settings, actor=self.name, instance=self.id,
                                    metrics=self.metrics, secrets=secrets)
        self._server: Server | None = None
        self.uploads: UploadServer | None = None
        self._client: Client | None = None
        self._idle: anyio.Event | None = None  # set when the last ask ends, while stopping
        m = self.metrics
        self._connections = m.get(Gauge, "ragbus_bridge_connections", "Open WebSockets",
                                  ["actor"]).labels(self.name)
        self._closes = m.get(Counter, "ragbus_bridge_closes",
                             "WebSockets closed, by why", ["actor", "reason"])
        self._asks = m.get(Counter, "ragbus_bridge_asks", "Asks by how they ended",
                           ["actor", "outcome"])
        self._refused = m.get(Counter, "ragbus_bridge_refused",
                              "Sockets and asks refused, by why", ["actor", "reason"])
        self._coalesced = m.get(Counter, "ragbus_bridge_coalesced_tokens",
                                "Tokens merged into a frame already queued for a slow reader",
                                ["actor"]).labels(self.name)
        self._ttft = m.get(Histogram, "ragbus_bridge_first_token_seconds",
                           "From an ask arriving to its first token arriving",
                           ["actor"], buckets=_TTFT_BUCKETS).labels(self.name)

    # -- where it listens ----------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The page's address (the bound port, which matters when ``port`` is 0)."""
        return page_url(self.config, self.port)

    @property
    def ws_url(self) -> str:
        return ws_url(self.url)

    @property
    def upload_url(self) -> str | None:
        """Where ``POST /upload`` is served (None with ``bridge.uploads`` off)."""
        if self.uploads is None or self.uploads.port is None:
            return None
        return page_url(self.config, self.uploads.port) + UPLOAD_PATH

    @property
    def limits(self) -> RateLimits:
        """The per-identity limits, shared by every replica (opened in :meth:`setup`)."""
        assert self._limits is not None, "setup() has not run"
        return self._limits

    def release(self, identity: str, ask: str, took_s: float) -> None:
        """An admitted ask has ended: its place is free here at once, and in the shared
        store a moment later (from :meth:`_return_places`)."""
        self.limits.end(identity, ask, took_s)
        self._releases[0].send_nowait(identity)

    async def _return_places(self) -> None:
        async for identity in self._releases[1]:
            try:
                await self.limits.flush(identity)
            except Exception as exc:  # the next admit writes it, or its lease ends
                self.log.warning("bridge.release_failed", error=repr(exc))

    @property
    def client(self) -> Client:
        """How asks go on the bus (connected in :meth:`setup`)."""
        assert self._client is not None, "setup() has not run"
        return self._client

    # -- lifecycle -----------------------------------------------------------------------------
    async def setup(self) -> None:
        self._client = Client(self.nc, self.subjects)
        cfg = self.config
        self._limits = RateLimits(
            await self.ensure_kv(limits_bucket(self.subjects)), cfg.asks_per_minute,
            cfg.concurrent_asks, wait_s=cfg.limits_wait_s,
            # an ask's place is held no longer than the ask can run
            lease_s=cfg.ask_timeout_s + cfg.cancel_grace_s + 5.0)
        tls = _tls_context(cfg.tls_cert, cfg.tls_key)
        try:
            self._server = await serve(
                self._serve_socket, cfg.host, cfg.port, process_request=self._http, ssl=tls,
                # frames up to 4x the limit get an error frame; beyond, reading them costs
                max_size=cfg.max_frame_bytes * 4, write_limit=cfg.send_buffer_bytes,
                compression=None, close_timeout=cfg.close_timeout_s, server_header=None,
            )
        except OSError as exc:
            raise CannotListenError(
                f"the bridge cannot listen on {cfg.host}:{cfg.port} ({exc.strerror or exc}): "
                "stop what holds the port, or set bridge.port / bridge.host "
                "(RAGBUS_BRIDGE__PORT, `ragbus bridge --port`)") from exc
        self.port = int(next(iter(self._server.sockets)).getsockname()[1])
        self.auth.allow_own_origin(cfg.host, self.port, "https" if tls else "http")
        if cfg.uploads:
            await self._serve_uploads(tls)
        self.accepting = True
        self.log.info("bridge.listening", url=self.url, websocket=self.ws_url,
                      uploads=self.upload_url)
        if tls is None and cfg.host not in LOOPBACK_HOSTS:
            self.log.warning("bridge.plaintext", host=cfg.host,
                             advice="keys, tokens and answers cross the network in clear: "
                                    "set bridge.tls_cert and bridge.tls_key, or put a proxy "
                                    "that terminates TLS in front")
        if self.auth.weak_jwt_secret:
            self.log.warning("bridge.weak_jwt_secret",
                             advice="bridge.jwt_secret is shorter than 32 bytes: use a random "
                                    "secret of 32 bytes or more")

    async def _serve_uploads(self, tls: ssl.SSLContext | None) -> None:
        cfg = self.config
        port = upload_port(cfg)
        self.uploads = UploadServer(self)
        try:
            await self.uploads.start(cfg.host, port, tls)
        except OSError as exc:
            raise CannotListenError(
                f"the bridge cannot take uploads on {cfg.host}:{port} "
                f"({exc.strerror or exc}): stop what holds the port, or set "
                "bridge.upload_port (RAGBUS_BRIDGE__UPLOAD_PORT), or bridge.uploads = false"
            ) from exc

    async def background(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.audit.run, self.nc)
            tg.start_soon(self._watch_writes)
            tg.start_soon(self._return_places)

    async def _watch_writes(self) -> None:
        """One timer for every socket: find writes stuck behind a reader that stopped."""
        tick = min(1.0, self.config.slow_reader_timeout_s / 4)
        while True:
            await anyio.sleep(tick)
            now = anyio.current_time()
            for session in list(self.sessions):
                session.check_stuck(now)

    async def teardown(self) -> None:
        """Take no new asks, let running ones finish (``runtime.drain_grace_s``), then
        close every socket with 1001, which cancels what is left on the bus."""
        self.accepting = False
        if self._server is not None:
            if self.open_asks:
                self._idle = anyio.Event()
                with anyio.move_on_after(self.settings.runtime.drain_grace_s):
                    await self._idle.wait()
            for session in list(self.sessions):
                session.shutdown()
            # let each socket close with its own 1001 and reason before the server closes
            # what is left (with no reason)
            with anyio.move_on_after(self.config.close_timeout_s):
                while self.sessions:  # noqa: ASYNC110 - sessions leave as their sockets close
                    await anyio.sleep(0.01)
            self._server.close()
            with anyio.move_on_after(self.config.close_timeout_s + 2.0):
                await self._server.wait_closed()
            self._server = None
        if self.uploads is not None:
            with anyio.move_on_after(self.config.close_timeout_s + 2.0):
                await self.uploads.stop()
            self.uploads = None

    # -- HTTP ------------------------------------------------------------------------------------
    async def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0]
        if path == WS_PATH:
            if not self.accepting:
                return response(http.HTTPStatus.SERVICE_UNAVAILABLE,
                                b"the bridge is stopping\n", "text/plain; charset=utf-8")
            return None  # the WebSocket handshake goes on
        page = self.pages.get(path)
        if page is not None:
            return response(http.HTTPStatus.OK, page.body, page.content_type)
        if path == "/healthz":
            return response(http.HTTPStatus.OK, b'{"status": "ok"}', "application/json")
        if path == "/readyz":
            if not self.accepting:  # stopping: a load balancer should look elsewhere now
                return response(http.HTTPStatus.SERVICE_UNAVAILABLE,
                                b'{"ready": false, "stopping": true}', "application/json")
            state = await self.readiness.check(self._nc)
            status = http.HTTPStatus.OK if state.ready else http.HTTPStatus.SERVICE_UNAVAILABLE
            return response(status, state.to_json(), "application/json")
        return response(http.HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")

    # -- sockets ---------------------------------------------------------------------------------
    async def _serve_socket(self, ws: ServerConnection) -> None:
        session = Session(self, ws)
        session.tune_socket()
        self.sessions.add(session)
        self._connections.inc()
        try:
            await session.serve()
        except Exception:
            self.log.exception("bridge.session_failed")
            self._closes.labels(self.name, "error").inc()
        finally:
            self._connections.dec()
            self.sessions.discard(session)

    # -- the bus -----------------------------------------------------------------------------
    def forget(self, request_id: str) -> None:
        """An ask has ended: its events are no longer routed."""
        self.open_asks.pop(request_id, None)
        if not self.open_asks and self._idle is not None:
            self._idle.set()

    # -- accounting (metrics and audit) ------------------------------------------------------
    def count_ask(self, outcome: str) -> None:
        self._asks.labels(self.name, outcome).inc()

    def count_close(self, reason: str) -> None:
        self._closes.labels(self.name, reason).inc()

    def count_coalesced(self) -> None:
        self._coalesced.inc()

    def observe_first_token(self, seconds: float) -> None:
        self._ttft.observe(seconds)

    def on_denied(self, exc: AuthDeniedError, *, origin: str | None, address: str) -> None:
        """A socket or an upload refused for its credentials or origin."""
        self._refused.labels(self.name, exc.label).inc()
        self.log.info("bridge.auth_denied", reason=exc.reason, method=exc.method,
                      origin=origin)
        self.audit.emit_nowait(AuditKind.AUTH_DENIED, outcome=AuditOutcome.DENIED,
                               code=exc.audit_code,
                               details={"reason": exc.reason, "method": exc.method,
                                        "origin": origin, "address": address})

    def on_rate_limited(self, session: Session, denied: Denied) -> None:
        self._refused.labels(self.name, f"rate_limit_{denied.scope}").inc()
        identity = session.identity.key if session.identity is not None else None
        state = denied.state
        self.audit.emit_nowait(AuditKind.RATE_LIMITED, outcome=AuditOutcome.DENIED,
                               code="RATE_LIMIT", subject=identity,
                               details={"scope": denied.scope, "limit": state.limit,
                                        "concurrent_limit": state.concurrent_limit,
                                        "remaining": state.remaining,
                                        "reset_in_seconds": state.reset_in_seconds})


def _tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if cert is None or key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except OSError as exc:  # ssl.SSLError is one too
        raise CertificateUnusableError(
            f"the bridge cannot use its TLS certificate {cert!r} with key {key!r} "
            f"({exc.strerror or exc}): check "
            "bridge.tls_cert and bridge.tls_key (PEM files, the key matching the "
            "certificate)") from exc
    return context


def page_url(config: BridgeSettings, port: int | None = None) -> str:
    """Where the page is served: https when the bridge has a certificate."""
    host = config.host
    shown = f"[{host}]" if ":" in host else host
    scheme = "https" if config.tls_cert else "http"
    return f"{scheme}://{shown}:{config.port if port is None else port}"


def upload_port(config: BridgeSettings) -> int:
    """``bridge.upload_port``, by default the bridge's port + 1 (0, any free one, when the
    bridge's port is 0)."""
    if config.upload_port is not None:
        return config.upload_port
    return config.port + 1 if config.port else 0


def upload_url(config: BridgeSettings) -> str | None:
    """Where ``POST /upload`` is served, if that is known before the bridge starts."""
    port = upload_port(config)
    if not config.uploads or not port:
        return None
    return page_url(config, port) + UPLOAD_PATH


def ws_url(page: str) -> str:
    """The WebSocket beside a page URL (wss beside https)."""
    return "ws" + page.removeprefix("http") + WS_PATH
