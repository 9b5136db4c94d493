"""The actor base: subscriptions, one task per message, deadlines, cancel, drain.

nats-py runs a subscription's callbacks one at a time, so the callback only
admits the message (waiting while ``concurrency`` handlers are busy, which is
the back-pressure) and spawns a task for it. Everything that can go wrong with a
message (too large, undecodable, expired, cancelled, failing) becomes an error
reply with a code; nothing a message does can stop the actor.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar, TypeVar, Unpack

import anyio
import anyio.lowlevel
import msgspec
import structlog
from anyio.abc import TaskStatus
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ragbus.config import Settings
from ragbus.subjects import (
    ERROR_HEADER,
    SCHEMA_VERSION,
    Cancel,
    Cancelled,
    ErrorCode,
    ErrorReply,
    Failed,
    Message,
    Request,
    StreamRequest,
    Subjects,
    Trace,
    new_id,
    now_ms,
)

from . import codec
from ._discovery import Discovery, EndpointCounters
from ._inflight import InFlight, Work
from .audit import AuditFields, AuditPublisher, config_summary
from .errors import (
    BadRequest,
    DeadlineExceeded,
    RagbusError,
    TooLarge,
    Unavailable,
    UnsupportedVersion,
)
from .metrics import Metrics
from .security import connect_as, role_for_actor

__all__ = ("Actor", "Context", "EndpointSpec", "endpoint")

R = TypeVar("R", bound=Message)
Handler = Callable[[Any, Any, "Context"], Awaitable[Message | None]]
REQUEST_ID_HEADER = "Ragbus-Request-Id"
TRACE_HEADER = "Ragbus-Trace-Id"


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """What an ``@endpoint`` method declares: where it listens and what it decodes."""

    name: str
    subject: Callable[[Subjects], str]
    request: type[Message]
    queue: bool
    method: str


def endpoint(
    subject: Callable[[Subjects], str],
    *,
    request: type[Message],
    name: str | None = None,
    queue: bool = True,
) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    """Declare a handler ``async def h(self, request, ctx) -> reply | None``.

    ``queue=True`` (the default) subscribes in the actor kind's queue group, so
    replicas share the load; ``queue=False`` delivers every message to every replica.
    """

    def mark(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        fn.__ragbus_endpoint__ = EndpointSpec(  # type: ignore[attr-defined]
            name=name or fn.__name__, subject=subject, request=request, queue=queue,
            method=fn.__name__,
        )
        return fn

    return mark


class _Loose(msgspec.Struct):
    """Enough of an envelope to address an error when the full message will not decode."""

    request_id: str | None = None
    reply_to: str | None = None


class Context:
    """Per-message facts and helpers handed to a handler."""

    __slots__ = ("_actor", "deadline", "endpoint", "log", "msg", "partial_text_length",
                 "request_id", "tokens_used", "trace")

    def __init__(self, actor: Actor, msg: Msg, endpoint: str, request_id: str, deadline: int,
                 trace: Trace, log: Any) -> None:
        self._actor = actor
        self.msg = msg
        self.endpoint = endpoint
        self.request_id = request_id
        self.deadline = deadline
        self.trace = trace
        self.log = log
        # a streaming handler keeps these current so CANCELLED can say what was produced
        self.partial_text_length = 0
        self.tokens_used = 0

    @property
    def nc(self) -> NATS:
        return self._actor.nc

    @property
    def subjects(self) -> Subjects:
        return self._actor.subjects

    def remaining(self) -> float:
        """Seconds left before the deadline (never negative)."""
        return max(0.0, (self.deadline - now_ms()) / 1000)

    def headers(self) -> dict[str, str]:
        return {REQUEST_ID_HEADER: self.request_id, TRACE_HEADER: self.trace.trace_id}

    async def publish(self, subject: str, message: Message) -> None:
        await self.nc.publish(subject, codec.encode(message), headers=self.headers())

    async def audit(self, kind: str, **fields: Unpack[AuditFields]) -> bool:
        """Record an audited action of this request (its request and trace ids filled in)."""
        fields.setdefault("request_id", self.request_id)
        fields.setdefault("trace_id", self.trace.trace_id)
        return await self._actor.audit.emit(kind, **fields)

    async def request(self, subject: str, message: Message, reply: type[R]) -> R:
        """Ask another actor, within this request's deadline; error replies raise."""
        from .client import decode_reply  # circular: client builds on the same codec

        timeout = self.remaining()
        if timeout <= 0:
            raise DeadlineExceeded("the deadline passed before the request could be sent")
        try:
            answer = await self.nc.request(subject, codec.encode(message), timeout=timeout,
                                           headers=self.headers())
        except TimeoutError:
            raise DeadlineExceeded(f"no reply from {subject} before the deadline") from None
        except Exception as exc:  # no responders and friends: the peer is not there
            if type(exc).__name__ == "NoRespondersError":
                raise Unavailable(f"no actor is serving {subject}") from None
            raise
        return decode_reply(answer, reply)


class Actor:
    """Subclass, set ``name``, and declare handlers with :func:`endpoint`."""

    name: ClassVar[str] = "actor"
    #: the bus role it logs in as when security is on (default: runtime.security.ACTOR_ROLES)
    role: ClassVar[str | None] = None
    version: ClassVar[str] = "0.1.0"
    description: ClassVar[str] = ""
    _endpoints: ClassVar[tuple[EndpointSpec, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        specs: dict[str, EndpointSpec] = {spec.method: spec for spec in cls._endpoints}
        for attr in vars(cls).values():
            spec = getattr(attr, "__ragbus_endpoint__", None)
            if isinstance(spec, EndpointSpec):
                specs[spec.method] = spec
        cls._endpoints = tuple(specs.values())

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        nats_url: str | None = None,
        metrics: Metrics | None = None,
        concurrency: int | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.nats_url = nats_url
        self.metrics = metrics or Metrics()
        self.subjects = Subjects(self.settings.subject_prefix)
        self.id = new_id()[:12]
        self.concurrency = concurrency or self.settings.runtime.concurrency
        self.log = structlog.get_logger().bind(actor=self.name, instance=self.id)
        self.inflight = InFlight()
        self._nc: NATS | None = None
        self._stop = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self._slots = anyio.Semaphore(self.concurrency)
        self._counters: dict[str, EndpointCounters] = {}
        self._inflight_gauge = self.metrics.inflight.labels(self.name)
        self._accepting = False
        self.audit = AuditPublisher(self.settings, actor=self.name, instance=self.id,
                                    metrics=self.metrics)

    # -- hooks ------------------------------------------------------------------------
    async def setup(self) -> None:
        """Open what the handlers need (streams, models, stores); runs after connecting."""

    async def teardown(self) -> None:
        """Release what :meth:`setup` opened; runs after in-flight work has ended."""

    async def background(self) -> None:
        """Long-running work beside the handlers (batchers, consumers, timers).

        Starts after :meth:`setup`, keeps running while in-flight work drains, and is
        cancelled after that. Returning early is fine; raising crashes the actor.
        """

    # -- lifecycle --------------------------------------------------------------------
    @property
    def nc(self) -> NATS:
        if self._nc is None:
            raise RuntimeError(f"actor {self.name} is not connected: call serve() first")
        return self._nc

    @property
    def stopping(self) -> bool:
        """True once a stop was requested: background loops should take no new work."""
        return self._stop.is_set()

    def request_stop(self) -> None:
        """Begin a graceful stop: take no new work, let in-flight work finish."""
        self._stop.set()

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Connect, set up, serve until :meth:`request_stop`, then drain and tear down."""
        security = self.settings.security
        role = (self.role or role_for_actor(self.name)) if security.enabled else ""
        self._nc = await connect_as(self.settings.nats, security, role, url=self.nats_url,
                                    name=f"{self.name}-{self.id}")
        self.metrics.watch_connection(self.name, self._nc)
        discovery: Discovery | None = None
        try:
            await self.setup()
            async with anyio.create_task_group() as tg:
                self._tg = tg
                # before any handler runs; cancelled with background, then flushes (bounded)
                await tg.start(partial(self.audit.run, self.nc,
                                       ensure_stream=not security.enabled))
                await self.audit.emit("config.loaded", subject=self.name,
                                      details=config_summary(self.settings))
                tg.start_soon(self.background)
                subs = await self._subscribe()
                discovery = Discovery(
                    nc=self.nc, name=self.name, id=self.id, version=self.version,
                    description=self.description or (type(self).__doc__ or "").strip(),
                    endpoints=lambda: list(self._counters.values()),
                )
                await discovery.start()
                # subscribe() only queues SUB; yield so it is written, then flush as a barrier
                await anyio.lowlevel.checkpoint()
                await self.nc.flush()
                self._accepting = True
                self.log.info("actor.started", endpoints=[s.name for s in self._endpoints])
                task_status.started()
                await self._stop.wait()
                await self._drain(subs)
                tg.cancel_scope.cancel()
        finally:
            self._accepting = False
            with anyio.CancelScope(shield=True):
                if discovery is not None:
                    await discovery.stop()
                try:
                    await self.teardown()
                finally:
                    if not self._nc.is_closed:
                        await self._nc.close()
                    self.log.info("actor.stopped")

    async def _drain(self, subs: list[Subscription]) -> None:
        self._accepting = False
        for sub in subs:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # a closed connection has nothing left to deliver
                self.log.debug("actor.unsubscribe_failed", error=str(exc))
        grace = self.settings.runtime.drain_grace_s
        self.log.info("actor.draining", inflight=len(self.inflight), grace_s=grace)
        with anyio.move_on_after(grace):
            await self.inflight.wait_idle()
        if len(self.inflight):
            self.log.warning("actor.drain_timeout", cancelled=len(self.inflight))
            self.inflight.cancel_all()
            with anyio.move_on_after(1.0):
                await self.inflight.wait_idle()

    def routes(self, spec: EndpointSpec) -> list[tuple[str, str]]:
        """(subject, queue group) pairs an endpoint listens on.

        One subject in the actor's queue group by default; an actor serving
        several shards overrides this to listen once per shard.
        """
        return [(spec.subject(self.subjects), self.name if spec.queue else "")]

    async def _subscribe(self) -> list[Subscription]:
        subs: list[Subscription] = []
        for spec in self._endpoints:
            for subject, queue in self.routes(spec):
                counters = EndpointCounters(spec.name, subject, queue)
                self._counters[f"{spec.name} {subject}"] = counters
                # label lookups take a lock; resolve each series once, not per message
                series = (self.metrics.messages.labels(self.name, spec.name),
                          self.metrics.latency.labels(self.name, spec.name))

                async def on_msg(msg: Msg, spec: EndpointSpec = spec,
                                 route: tuple[EndpointCounters, Any] = (counters, series)) -> None:
                    await self._admit(spec, msg, route)

                subs.append(await self.nc.subscribe(subject, queue=queue, cb=on_msg))
        subs.append(await self.nc.subscribe(self.subjects.cancel_all, cb=self._on_cancel))
        return subs

    async def _admit(self, spec: EndpointSpec, msg: Msg,
                     route: tuple[EndpointCounters, Any]) -> None:
        await self._slots.acquire()
        if not self._accepting or self._tg is None:
            self._slots.release()
            await self._reply_error(msg, Unavailable(f"{self.name} is shutting down; retry"),
                                    None, None, spec)
            return
        self._tg.start_soon(self._handle, spec, msg, route, time.perf_counter_ns())

    async def _on_cancel(self, msg: Msg) -> None:
        request_id = msg.subject.rsplit(".", 1)[-1]
        reason = ""
        if msg.data:
            with contextlib.suppress(msgspec.DecodeError):
                reason = codec.decode(msg.data, Cancel).reason
        if self.inflight.cancel(request_id, reason):
            self.log.info("request.cancel", request_id=request_id, reason=reason)

    # -- one message --------------------------------------------------------------------
    async def _handle(self, spec: EndpointSpec, msg: Msg, route: tuple[EndpointCounters, Any],
                      received_ns: int) -> None:
        error: str | None = None
        counters, (messages, latency) = route
        messages.inc()
        self._inflight_gauge.inc()
        try:
            error = await self._process(spec, msg)
        finally:
            elapsed = time.perf_counter_ns() - received_ns
            latency.observe(elapsed / 1e9)
            self._inflight_gauge.dec()
            counters.record(elapsed, error)
            self._slots.release()

    async def _process(self, spec: EndpointSpec, msg: Msg) -> str | None:
        """Run one message; returns the error code sent, if any."""
        limit = self.settings.runtime.max_message_bytes
        if len(msg.data) > limit:
            err: RagbusError = TooLarge(
                f"message is {len(msg.data)} bytes; the limit is {limit} "
                "(runtime.max_message_bytes): send smaller batches",
                details={"size": len(msg.data), "limit": limit},
            )
            return await self._reply_error(msg, err, None, None, spec)
        try:
            request = codec.decode(msg.data, spec.request)
        except msgspec.DecodeError as exc:
            loose = _loose(msg.data)
            err = BadRequest(f"invalid {spec.request.__name__} message: {exc}",
                             details={"expected": spec.request.__name__})
            return await self._reply_error(msg, err, loose.request_id, loose.reply_to, spec)

        headers = msg.headers or {}
        request_id: str = (getattr(request, "request_id", None)
                           or headers.get(REQUEST_ID_HEADER) or new_id())
        reply_to = request.reply_to if isinstance(request, StreamRequest) else None
        if request.v > SCHEMA_VERSION:
            err = UnsupportedVersion(
                f"schema version {request.v} is newer than this actor understands "
                f"({SCHEMA_VERSION}): upgrade the {self.name} actor",
            )
            return await self._reply_error(msg, err, request_id, reply_to, spec)

        trace = getattr(request, "trace", None) or Trace(
            trace_id=headers.get(TRACE_HEADER) or new_id())
        deadline = getattr(request, "deadline", None) or (
            now_ms() + int(self.settings.runtime.default_timeout_s * 1000))
        log = self.log.bind(request_id=request_id, endpoint=spec.name, trace_id=trace.trace_id)
        if now_ms() >= deadline:
            err = DeadlineExceeded("the request's deadline had passed when it arrived",
                                   trace_id=trace.trace_id)
            return await self._reply_error(msg, err, request_id, reply_to, spec, log)

        ctx = Context(self, msg, spec.name, request_id, deadline, trace, log)
        handler: Handler = getattr(type(self), spec.method)
        scope = anyio.CancelScope(deadline=anyio.current_time() + ctx.remaining())
        work: Work | None = self.inflight.add(request_id, scope) if isinstance(
            request, Request) else None
        try:
            with structlog.contextvars.bound_contextvars(
                request_id=request_id, actor=self.name, trace_id=trace.trace_id
            ):
                with scope:
                    result = await handler(self, request, ctx)
                if scope.cancelled_caught:
                    if work is not None and work.stopping:
                        err = Unavailable(f"{self.name} stopped before finishing; retry",
                                          trace_id=trace.trace_id)
                        return await self._reply_error(msg, err, request_id, reply_to, spec, log)
                    if work is not None and work.cancel_requested:
                        return await self._reply_cancelled(msg, ctx, reply_to, work.reason,
                                                           spec)
                    err = DeadlineExceeded("the deadline passed while the request was handled",
                                           trace_id=trace.trace_id)
                    return await self._reply_error(msg, err, request_id, reply_to, spec, log)
                if msg.reply and result is not None:
                    await self.nc.publish(msg.reply, codec.encode(result))
                return None
        except RagbusError as exc:
            exc.trace_id = exc.trace_id or trace.trace_id
            return await self._reply_error(msg, exc, request_id, reply_to, spec, log)
        except ExceptionGroup as group:
            # a handler's task group wraps what its children raised; a coded error inside
            # is still the answer (a fan-out's BAD_REQUEST must not become INTERNAL)
            coded = _first_coded(group)
            if coded is None:
                log.exception("handler.failed")
                coded = RagbusError(f"internal error in {self.name}; see its logs for trace "
                                    f"{trace.trace_id}")
            coded.trace_id = coded.trace_id or trace.trace_id
            return await self._reply_error(msg, coded, request_id, reply_to, spec, log)
        except anyio.get_cancelled_exc_class():
            # shutdown: tell the requester now rather than let it wait for its deadline
            with anyio.CancelScope(shield=True):
                await self._reply_error(
                    msg, Unavailable(f"{self.name} stopped before finishing; retry",
                                     trace_id=trace.trace_id),
                    request_id, reply_to, spec, log)
            raise
        except Exception:
            log.exception("handler.failed")
            err = RagbusError(f"internal error in {self.name}; see its logs for trace "
                              f"{trace.trace_id}", trace_id=trace.trace_id)
            return await self._reply_error(msg, err, request_id, reply_to, spec)
        finally:
            if work is not None:
                self.inflight.remove(work)

    async def _reply_cancelled(self, msg: Msg, ctx: Context, reply_to: str | None, reason: str,
                               spec: EndpointSpec) -> str:
        code = ErrorCode.CANCELLED
        self.metrics.errors.labels(self.name, spec.name, code.value).inc()
        ctx.log.info("request.cancelled", reason=reason)
        await ctx.audit("request.cancelled", outcome="cancelled", code=code.value,
                        subject=spec.name, details={"reason": reason},
                        sizes={"partial_text_length": ctx.partial_text_length,
                               "tokens_used": ctx.tokens_used})
        if msg.reply:
            body = ErrorReply(code=code, message=f"cancelled{': ' + reason if reason else ''}",
                              request_id=ctx.request_id, trace_id=ctx.trace.trace_id)
            await self._publish_error(msg.reply, body)
        if reply_to:
            await self._safe_publish(reply_to, codec.encode(Cancelled(
                request_id=ctx.request_id, partial_text_length=ctx.partial_text_length,
                tokens_used=ctx.tokens_used)))
        return code.value

    async def _reply_error(self, msg: Msg, err: RagbusError, request_id: str | None,
                           reply_to: str | None, spec: EndpointSpec,
                           log: Any | None = None) -> str:
        code = err.code
        self.metrics.errors.labels(self.name, spec.name, code.value).inc()
        (log or self.log).info("request.error", code=code.value, message=err.message,
                               endpoint=spec.name, request_id=request_id)
        kind = _AUDITED_ERRORS.get(code)
        if kind is not None:
            await self.audit.emit(kind, request_id=request_id, trace_id=err.trace_id,
                                  outcome="denied", code=code.value, subject=spec.name,
                                  details={"message": err.message})
        if msg.reply:
            await self._publish_error(msg.reply, err.to_reply(request_id))
        if reply_to and request_id:
            await self._safe_publish(reply_to, codec.encode(Failed(
                request_id=request_id, code=code, message=err.message, trace_id=err.trace_id,
                details=err.details)))
        return code.value

    async def _publish_error(self, subject: str, body: ErrorReply) -> None:
        await self._safe_publish(subject, codec.encode(body), {ERROR_HEADER: body.code.value})

    async def _safe_publish(self, subject: str, data: bytes,
                            headers: dict[str, str] | None = None) -> None:
        try:
            await self.nc.publish(subject, data, headers=headers)
        except Exception as exc:  # a reply subject from a bad message may be unusable
            self.log.warning("reply.failed", subject=subject, error=str(exc))


def _first_coded(group: BaseExceptionGroup[Exception]) -> RagbusError | None:
    for exc in group.exceptions:
        if isinstance(exc, RagbusError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_coded(exc)
            if found is not None:
                return found
    return None


_AUDITED_ERRORS = {
    ErrorCode.RATE_LIMIT: "rate.limited",
    ErrorCode.UNAUTHORIZED: "auth.denied",
    ErrorCode.FORBIDDEN: "auth.denied",
}


def _loose(data: bytes) -> _Loose:
    try:
        loose: _Loose = codec.decode(data, _Loose)
    except msgspec.DecodeError:
        return _Loose()
    if loose.reply_to is not None and (" " in loose.reply_to or not loose.reply_to):
        return _Loose(request_id=loose.request_id)
    return loose
