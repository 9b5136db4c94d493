"""The actor base: subscriptions, one task per message, deadlines, cancel, drain.

nats-py runs a subscription's callbacks one at a time, so the callback only
admits the message (waiting while ``concurrency`` handlers are busy, which is
the back-pressure) and spawns a task for it. Everything that can go wrong with a
message (too large, undecodable, expired, cancelled, failing) becomes an error
reply with a code; nothing a message does can stop the actor.

An endpoint declared with ``durable=`` takes its messages from a JetStream work
queue instead (a durable pull consumer): the same life per message, but its
outcome is an acknowledgement. Done: ack. Failed for good: term, after the actor's
:meth:`Actor.job_failed` has recorded why. Failed but worth another try (a peer
unavailable): nak with a backoff, until ``max_deliver``. The actor stopping: nak
at once, so another replica takes it.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar, TypedDict, TypeVar, Unpack

import anyio
import anyio.lowlevel
import msgspec
import structlog
from anyio.abc import TaskStatus
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    KeyValueConfig,
    ObjectStoreConfig,
    StreamConfig,
)
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from ragbus.config import Settings
from ragbus.subjects import (
    ERROR_HEADER,
    Accepted,
    Cancel,
    Cancelled,
    ErrorCode,
    ErrorReply,
    Failed,
    Message,
    ReplySubject,
    Request,
    StreamRequest,
    Subjects,
    Trace,
    new_id,
    now_ms,
)

from . import codec, tracing
from ._discovery import Discovery, EndpointCounters
from ._inflight import InFlight, Work
from .admission import AdaptiveLimit
from .audit import AuditFields, AuditPublisher, config_summary
from .errors import (
    BadRequestError,
    DeadlineExceededError,
    OverloadedError,
    RagbusError,
    RequestCancelledError,
    TooLargeError,
    UnavailableError,
)
from .handoff import HandOff, Unserved
from .jetstream import TRANSIENT, ensure_kv, ensure_object_store, ensure_stream
from .metrics import Metrics
from .security import connect_as, role_for_actor

__all__ = ("Actor", "ActorOptions", "Context", "Durable", "EndpointSpec", "endpoint")

R = TypeVar("R", bound=Message)
Handler = Callable[[Any, Any, "Context"], Awaitable[Message | None]]
REQUEST_ID_HEADER = "Ragbus-Request-Id"
TRACE_HEADER = "Ragbus-Trace-Id"


@dataclass(frozen=True, slots=True)
class Durable:
    """The JetStream work queue a ``durable=`` endpoint consumes, and how.

    A message is acknowledged only when its handler has finished, so a replica that
    dies mid-message leaves it to be redelivered: handlers must be idempotent.
    ``max_ack_pending`` bounds messages in flight across all replicas,
    ``concurrency`` within one; ``timeout_s`` is the deadline of a message that
    carries none.
    """

    name: str
    stream: Callable[[Subjects], str]
    ack_wait_s: float = 60.0
    max_ack_pending: int = 4
    max_deliver: int = 5
    concurrency: int = 1
    timeout_s: float = 3600.0


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """What an ``@endpoint`` method declares: where it listens and what it decodes."""

    name: str
    subject: Callable[[Subjects], str]
    request: type[Message]
    queue: bool
    method: str
    durable: Callable[[Any], Durable] | None = None
    accept: bool = False
    limit: Callable[[Any], AdaptiveLimit | None] | None = None


def endpoint(
    subject: Callable[[Subjects], str],
    *,
    request: type[Message],
    name: str | None = None,
    queue: bool = True,
    durable: Callable[[Any], Durable] | None = None,
    accept: bool = False,
    limit: Callable[[Any], AdaptiveLimit | None] | None = None,
) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    """Declare a handler ``async def h(self, request, ctx) -> reply | None``.

    ``queue=True`` (the default) subscribes in the actor kind's queue group, so
    replicas share the load; ``queue=False`` delivers every message to every replica.
    ``durable``, given the actor, says which JetStream work queue to consume instead
    of a core subscription (its reply is then an acknowledgement).
    ``accept=True`` (a streamed request's first hop): a message sent with a NATS reply
    subject gets :class:`~ragbus.subjects.Accepted` there as soon as its handler starts,
    and nothing else there afterwards (its events go to ``reply_to``); a refused one gets
    its error reply. Sent without a reply subject, nothing changes.
    ``limit``, given the actor, is the endpoint's :class:`AdaptiveLimit` (or None): a
    first hop's queries in flight, beyond which a message is refused with ``OVERLOADED``
    at once (core subscriptions only).
    """

    def mark(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        fn.__ragbus_endpoint__ = EndpointSpec(  # type: ignore[attr-defined]
            name=name or fn.__name__, subject=subject, request=request, queue=queue,
            method=fn.__name__, durable=durable, accept=accept, limit=limit,
        )
        return fn

    return mark


class _Raw(msgspec.Struct):
    """A message's envelope fields, whatever their types (a wrong one must not hide the
    others)."""

    request_id: Any = None
    reply_to: Any = None
    trace: Any = None


@dataclass(frozen=True, slots=True)
class _Loose:
    """Enough of an envelope to address an error when the full message will not decode:
    who awaits the outcome (``reply_to``) and under which ids, where they can be read."""

    request_id: str | None = None
    reply_to: str | None = None
    trace_id: str | None = None


class Context:
    """Per-message facts and helpers handed to a handler."""

    __slots__ = ("_actor", "_work", "attempt", "deadline", "endpoint", "final_attempt", "log",
                 "msg", "partial_text_length", "request_id", "span", "state", "tokens_used",
                 "trace")

    def __init__(self, actor: Actor, msg: Msg, endpoint: str, request_id: str, deadline: int,
                 trace: Trace, log: Any) -> None:
        self._actor = actor
        self._work: Work | None = None
        # a durable endpoint's delivery: which one, and whether another will follow a failure
        self.attempt = 1
        self.final_attempt = True
        #: what the handler keeps about this message, for ``Actor.job_failed`` to read
        self.state: Any = None
        #: this message's span (``runtime.tracing``; a no-op unless tracing is on)
        self.span = tracing.Span(None, trace)
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

    def annotate(self, **attributes: Any) -> None:
        """Mark this message's span (shard, hits, tokens, provider, cache hit, ...)."""
        self.span.set(**attributes)

    def cancellable_as(self, other_id: str) -> None:
        """Let ``rag.cancel.<other_id>`` stop this request too (a job by its job id)."""
        if self._work is not None:
            self._actor.inflight.alias(self._work, other_id)

    async def hand_off(self, subject: str, message: StreamRequest, *, hint: str = "") -> None:
        """Pass the request on to the next actor of the choreography; if nobody serves
        ``subject``, its ``reply_to`` gets ``failed`` UNAVAILABLE at once (``hint``: what
        to start). See ``runtime.handoff``."""
        await self._actor.handoff.send(subject, message, headers=self.headers(), hint=hint)

    async def request(self, subject: str, message: Message, reply: type[R]) -> R:
        """Ask another actor, within this request's deadline; error replies raise."""
        from .client import decode_reply  # circular: client builds on the same codec

        timeout = self.remaining()
        if timeout <= 0:
            raise DeadlineExceededError("the deadline passed before the request could be sent")
        if isinstance(message, Request) and message.trace is None:
            message = msgspec.structs.replace(message, trace=self.trace)  # parent: this span
        try:
            answer = await self.nc.request(subject, codec.encode(message), timeout=timeout,
                                           headers=self.headers())
        except TimeoutError:
            raise DeadlineExceededError(f"no reply from {subject} before the deadline") from None
        except Exception as exc:  # no responders and friends: the peer is not there
            if type(exc).__name__ == "NoRespondersError":
                raise UnavailableError(f"no actor is serving {subject}") from None
            raise
        return decode_reply(answer, reply)


class ActorOptions(TypedDict, total=False):
    """How an actor is hosted, beside its settings."""

    #: the NATS server to connect to (default: ``settings.nats.url``)
    nats_url: str | None
    #: the process's metrics registry, shared by the actors it runs
    metrics: Metrics | None
    #: messages handled at once (default: ``runtime.concurrency``)
    concurrency: int | None


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

    @classmethod
    def endpoint_specs(cls) -> tuple[EndpointSpec, ...]:
        """What this actor's handlers declare: for tools that read the contract (the
        fuzzing tests send malformed messages to every endpoint listed here)."""
        return cls._endpoints

    def __init__(self, settings: Settings | None = None,
                 **options: Unpack[ActorOptions]) -> None:
        """``settings`` (defaults when None); ``options``: see :class:`ActorOptions`.

        Subclasses keep this signature: ``def __init__(self, settings=None,
        **options: Unpack[ActorOptions])``, then ``super().__init__(settings, **options)``.
        """
        nats_url = options.get("nats_url")
        metrics = options.get("metrics")
        concurrency = options.get("concurrency")
        self.settings = settings or Settings()
        self.nats_url = nats_url
        self.metrics = metrics or Metrics()
        self.subjects = Subjects(self.settings.subject_prefix)
        self.id = new_id()[:12]
        self.concurrency = concurrency or self.settings.runtime.concurrency
        self.log = structlog.get_logger().bind(actor=self.name, instance=self.id)
        self.inflight = InFlight()
        self._nc: NATS | None = None
        self._handoff: HandOff | None = None
        self._stop = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self._slots = anyio.Semaphore(self.concurrency)
        #: messages waiting for a slot, and the mean time a handler takes (EWMA, s): what
        #: admission estimates a newcomer's wait from
        self._queued = 0
        self._service_s = 0.0
        self._counters: dict[str, EndpointCounters] = {}
        self._inflight_gauge = self.metrics.inflight.labels(self.name)
        self._accepting = False
        self.audit = AuditPublisher(self.settings, actor=self.name, instance=self.id,
                                    metrics=self.metrics)

    # -- hooks ------------------------------------------------------------------------
    @classmethod
    def prewarm(cls, settings: Settings) -> None:
        """Do ahead of need what :meth:`setup` would do under ``settings`` and needs no
        resource another process owns: no NATS connection, no store's lock, no port.

        A supervising parent's warm spare (``ragbus actor``) calls it before it waits, so
        a dead replica's successor finds the slow part (a model load) done and serves
        sooner; :meth:`setup` then takes what it left, if the settings still match. It
        runs in a process that may never become a replica (or becomes one much later),
        so it must be safe to do for nothing, and it is synchronous: there is no event
        loop yet. Raising is fine: the spare logs it and the replica does the work
        itself. The default does nothing.
        """

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
    def handoff(self) -> HandOff:
        """This actor's hand-offs to the next actor (``Context.hand_off``)."""
        if self._handoff is None:
            self._handoff = HandOff(self.nc, on_unserved=self._unserved)
        return self._handoff

    async def ensure_kv(self, config: KeyValueConfig) -> KeyValue:
        """Open (or create) a KV bucket with ``nats.replicas`` copies."""
        return await ensure_kv(self.nc, config, replicas=self.settings.nats.replicas)

    async def ensure_object_store(self, config: ObjectStoreConfig) -> ObjectStore:
        """Open (or create) an object store with ``nats.replicas`` copies."""
        return await ensure_object_store(self.nc, config, replicas=self.settings.nats.replicas)

    async def ensure_stream(self, config: StreamConfig) -> None:
        """Create (or update) a stream with ``nats.replicas`` copies."""
        await ensure_stream(self.nc, config, replicas=self.settings.nats.replicas)

    def _unserved(self, lost: Unserved) -> None:
        self.metrics.errors.labels(self.name, "hand_off", ErrorCode.UNAVAILABLE.value).inc()
        self.log.info("handoff.unserved", subject=lost.subject, request_id=lost.request_id)

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
                consumers = await tg.start(self._consume_all)
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
                await self._drain(subs, consumers)
                tg.cancel_scope.cancel()
        finally:
            self._accepting = False
            with anyio.CancelScope(shield=True):
                if discovery is not None:
                    await discovery.stop()
                try:
                    await self.teardown()
                finally:
                    if self._handoff is not None:
                        await self._handoff.close()
                    if not self._nc.is_closed:
                        await self._nc.close()
                    self.log.info("actor.stopped")

    async def _drain(self, subs: list[Subscription], consumers: _Consumers) -> None:
        self._accepting = False
        for sub in subs:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # a closed connection has nothing left to deliver
                self.log.debug("actor.unsubscribe_failed", error=str(exc))
        await consumers.stop()
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

    def _route(self, spec: EndpointSpec, subject: str, queue: str,
               adaptive: AdaptiveLimit | None = None) -> _Route:
        counters = EndpointCounters(spec.name, subject, queue)
        self._counters[f"{spec.name} {subject}"] = counters
        # label lookups take a lock; resolve each series once, not per message
        return _Route(counters, self.metrics.messages.labels(self.name, spec.name),
                      self.metrics.latency.labels(self.name, spec.name), adaptive,
                      None if adaptive is None else
                      self.metrics.admission_limit.labels(self.name, spec.name))

    async def _subscribe(self) -> list[Subscription]:
        subs: list[Subscription] = []
        for spec in self._endpoints:
            if spec.durable is not None:
                continue  # consumed from JetStream by _consume
            # one limit per endpoint, shared by its subjects: it measures this process
            adaptive = spec.limit(self) if spec.limit is not None else None
            for subject, queue in self.routes(spec):
                route = self._route(spec, subject, queue, adaptive)

                async def on_msg(msg: Msg, spec: EndpointSpec = spec,
                                 route: _Route = route) -> None:
                    await self._admit(spec, msg, route)

                subs.append(await self.nc.subscribe(subject, queue=queue, cb=on_msg))
        subs.append(await self.nc.subscribe(self.subjects.cancel_all, cb=self._on_cancel))
        return subs

    async def _admit(self, spec: EndpointSpec, msg: Msg, route: _Route) -> None:
        """Start the message's handler now if a slot is free; else queue it, unless the
        wait it would have is over ``runtime.max_queue_wait_s``: then refuse it at once
        with ``OVERLOADED`` (and a ``retry_after_s``), so that above capacity a client
        hears in milliseconds what it would otherwise wait seconds for, and the queries
        that are admitted keep their latency. nats-py runs this callback one message at a
        time, so it never waits itself: a waiting callback would queue messages unseen
        in the client's buffer, without bound."""
        if not self._accepting or self._tg is None:
            await self._reply_error(
                msg.reply, UnavailableError(f"{self.name} is shutting down; retry"), None, None,
                spec)
            return
        received = time.perf_counter_ns()
        adaptive = route.adaptive
        if adaptive is not None and not adaptive.try_acquire():
            retry_s = adaptive.retry_after_s()
            await self._shed(spec, msg, OverloadedError(
                f"{self.name} is at its limit of {int(adaptive.limit)} {spec.name} requests "
                f"in flight (they take over {adaptive.target_s:g} s now); retry later or "
                "elsewhere", details={"retry_after_s": retry_s}))
            return
        if self._slots.value > 0:
            self._slots.acquire_nowait()
            self._tg.start_soon(self._handle, spec, msg, route, received, None)
            return
        limit = self.settings.runtime.max_queue_wait_s
        wait_s = (self._queued + 1) * self._service_s / self.concurrency
        if limit is not None and wait_s > limit:
            if adaptive is not None:
                adaptive.forget()
            await self._shed(spec, msg, OverloadedError(
                f"{self.name} is over capacity (about {wait_s:.1f} s of work queued); retry "
                "later or elsewhere", details={"retry_after_s": round(max(wait_s, 0.1), 2)}))
            return
        self._queued += 1
        self._tg.start_soon(self._queue_then_handle, spec, msg, route, received)

    async def _queue_then_handle(self, spec: EndpointSpec, msg: Msg, route: _Route,
                                 received: int) -> None:
        try:
            await self._slots.acquire()
        finally:
            self._queued -= 1
        await self._handle(spec, msg, route, received, None)

    async def _shed(self, spec: EndpointSpec, msg: Msg, err: OverloadedError) -> None:
        """Refuse a message admission will not queue, to whoever awaits its outcome: its
        reply subject, and a stream request's ``reply_to`` (read without decoding the
        rest; a message too broken to read is refused on its reply subject only)."""
        envelope = _loose(msg.data)
        await self._reply_error(msg.reply, err, envelope.request_id, envelope.reply_to, spec)

    async def _consume_all(self, *,
                           task_status: TaskStatus[_Consumers] = anyio.TASK_STATUS_IGNORED,
                           ) -> None:
        """Run a consumer per durable endpoint until :meth:`_Consumers.stop`."""
        consumers = _Consumers()
        with consumers.scope:
            async with anyio.create_task_group() as tg:
                for spec in self._endpoints:
                    if spec.durable is not None:
                        await tg.start(self._consume, spec, spec.durable(self))
                task_status.started(consumers)
        consumers.done.set()

    async def _consume(self, spec: EndpointSpec, durable: Durable, *,
                       task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Take a durable endpoint's messages, ``durable.concurrency`` at a time.

        A fetch is never interrupted: a pull request left at the server would take a
        message nobody reads, and it would wait ``ack_wait_s`` to be redelivered. So a
        stop cancels only the wait for a free slot; a fetch in progress ends by itself
        (within 0.5 s) and what it brought is handed back.
        """
        subject = spec.subject(self.subjects)
        sub = await self.nc.jetstream().pull_subscribe(
            subject, durable=durable.name, stream=durable.stream(self.subjects),
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=durable.ack_wait_s,
                                  max_ack_pending=durable.max_ack_pending,
                                  max_deliver=durable.max_deliver))
        route = self._route(spec, subject, durable.name)
        slots = anyio.Semaphore(durable.concurrency)
        given_up = await self.nc.subscribe(
            f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{durable.stream(self.subjects)}."
            f"{durable.name}", queue=self.name,
            cb=partial(self._given_up, spec, durable))
        task_status.started()
        try:
            await self._fetch_loop(spec, durable, sub, route, slots)
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await given_up.unsubscribe()

    async def _fetch_loop(self, spec: EndpointSpec, durable: Durable, sub: Any, route: _Route,
                          slots: anyio.Semaphore) -> None:
        while True:
            await slots.acquire()
            with anyio.CancelScope(shield=True):
                try:
                    msgs = await sub.fetch(1, timeout=0.5)
                # nats-py raises its TimeoutError, or asyncio's bare one when the fetch's
                # time runs out before its last pull request: both are "nothing came"
                except TimeoutError:
                    msgs = []
                except Exception as exc:  # the bus is reconnecting: try again shortly
                    self.log.warning("consumer.fetch_failed", endpoint=spec.name,
                                     error=repr(exc))
                    msgs = []
                    await anyio.sleep(0.5)
                if self.stopping:  # fetched while draining: another replica takes it now
                    for msg in msgs:
                        with contextlib.suppress(Exception):
                            await msg.nak()
                    slots.release()
                    return
            if not msgs:
                slots.release()
                continue
            assert self._tg is not None
            for msg in msgs:
                self._tg.start_soon(self._take, spec, durable, msg, route, slots)

    async def _given_up(self, spec: EndpointSpec, durable: Durable, advisory: Msg) -> None:
        """JetStream gave up on a message: every delivery ended without an answer (the
        process died or hung each time), so no handler will ever record why. Record it
        here (``job_failed``) and remove the message, or it would sit in the queue."""
        try:
            event = json.loads(advisory.data)
            seq, deliveries = int(event["stream_seq"]), int(event.get("deliveries", 0))
            js = self.nc.jetstream()
            stream = durable.stream(self.subjects)
            raw = await js.get_msg(stream, seq)
            request = codec.decode(raw.data or b"", spec.request)
        except Exception as exc:  # gone already, or not ours to read: nothing to record
            self.log.warning("job.given_up_unreadable", endpoint=spec.name, error=repr(exc))
            return
        request_id: str = getattr(request, "request_id", None) or new_id()
        trace = getattr(request, "trace", None) or Trace()
        log = self.log.bind(request_id=request_id, endpoint=spec.name, trace_id=trace.trace_id)
        ctx = Context(self, advisory, spec.name, request_id, now_ms(), trace, log)
        ctx.attempt, ctx.final_attempt = deliveries, True
        err = UnavailableError(
            f"given up after {deliveries} deliveries: each ended without an answer (the "
            f"{self.name} died or stalled while handling it)", trace_id=trace.trace_id)
        self.metrics.errors.labels(self.name, spec.name, err.code.value).inc()
        log.warning("job.given_up", deliveries=deliveries, stream_seq=seq)
        with anyio.CancelScope(shield=True):
            try:
                await self.job_failed(request, ctx, err, retrying=False)
            except Exception:
                log.exception("job.record_failed")
            with contextlib.suppress(Exception):
                await js.delete_msg(stream, seq)

    async def _take(self, spec: EndpointSpec, durable: Durable, msg: Msg, route: _Route,
                    slots: anyio.Semaphore) -> None:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._keep_alive, msg, durable.ack_wait_s)
                await self._handle(spec, msg, route, time.perf_counter_ns(), durable)
                tg.cancel_scope.cancel()
        finally:
            slots.release()

    @staticmethod
    async def _keep_alive(msg: Msg, ack_wait_s: float) -> None:
        """Tell JetStream the message is being worked on, so it is not redelivered."""
        while True:
            await anyio.sleep(ack_wait_s / 3)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def _on_cancel(self, msg: Msg) -> None:
        """A cancel goes through the same intake as any request (``codec.read``: size
        limit first, then the schema); one that does not pass cancels nothing. It has no
        reply, so the refusal is only logged. An empty body is a cancel without reason."""
        request_id = msg.subject.rsplit(".", 1)[-1]
        reason = ""
        if msg.data:
            try:
                cancel = codec.read(msg.data, Cancel,
                                    limit=self.settings.runtime.max_message_bytes,
                                    receiver=self.name)
                if cancel.request_id is not None and cancel.request_id != request_id:
                    raise BadRequestError(f"the Cancel names {cancel.request_id!r} but was "
                                          f"published for {request_id!r}")
            except RagbusError as err:
                self.log.warning("request.cancel_refused", request_id=request_id,
                                 code=err.code.value, error=err.message)
                return
            reason = cancel.reason
        if self.inflight.cancel(request_id, reason):
            self.log.info("request.cancel", request_id=request_id, reason=reason)

    # -- one message --------------------------------------------------------------------
    async def _handle(self, spec: EndpointSpec, msg: Msg, route: _Route, received_ns: int,
                      durable: Durable | None) -> None:
        error: str | None = None
        started = time.perf_counter_ns()  # after any wait for a slot: the service time
        route.messages.inc()
        self._inflight_gauge.inc()
        try:
            outcome: _Outcome = (_Reply(self, spec, msg) if durable is None
                                 else _Ack(self, spec, msg, durable))
            error = await self._process(spec, msg, outcome)
        finally:
            elapsed = time.perf_counter_ns() - received_ns
            route.latency.observe(elapsed / 1e9)
            if route.adaptive is not None and durable is None:
                route.adaptive.release(elapsed / 1e9)
                route.limit_gauge.set(route.adaptive.limit)
            self._inflight_gauge.dec()
            route.counters.record(elapsed, error)
            if durable is None:
                self._slots.release()
                service_s = (time.perf_counter_ns() - started) / 1e9
                self._service_s = service_s if not self._service_s else (
                    self._service_s + 0.1 * (service_s - self._service_s))

    async def _process(self, spec: EndpointSpec, msg: Msg, outcome: _Outcome) -> str | None:
        """Run one message; returns the error code it ended with, if any."""
        headers = msg.headers or {}
        try:
            request = codec.read(msg.data, spec.request,
                                 limit=self.settings.runtime.max_message_bytes,
                                 receiver=self.name)
        except TooLargeError as err:  # not even its envelope is read
            return await outcome.failed(err, None, None, None, None)
        except RagbusError as err:
            # refused: address the error from what can be read of the envelope
            loose = _loose(msg.data)
            err.trace_id = loose.trace_id or headers.get(TRACE_HEADER)
            return await outcome.failed(err, None,
                                        loose.request_id or headers.get(REQUEST_ID_HEADER),
                                        loose.reply_to, None)

        request_id: str = (getattr(request, "request_id", None)
                           or headers.get(REQUEST_ID_HEADER) or new_id())
        reply_to = request.reply_to if isinstance(request, StreamRequest) else None
        trace = getattr(request, "trace", None) or Trace(
            trace_id=headers.get(TRACE_HEADER) or new_id())
        deadline = getattr(request, "deadline", None) or (
            now_ms() + int(outcome.default_timeout_s() * 1000))
        log = self.log.bind(request_id=request_id, endpoint=spec.name, trace_id=trace.trace_id)

        with tracing.span(f"{self.name} {spec.name}", trace, actor=self.name,
                          endpoint=spec.name, request_id=request_id) as span:
            ctx = Context(self, msg, spec.name, request_id, deadline, span.trace, log)
            ctx.span = span
            await outcome.accepted(ctx)
            code = await self._run(spec, msg, outcome, ctx, request, reply_to)
            if code == ErrorCode.CANCELLED.value:
                span.cancelled()
            elif code is not None:
                span.failed(code)
            return code

    async def _run(self, spec: EndpointSpec, msg: Msg, outcome: _Outcome, ctx: Context,
                   request: Message, reply_to: str | None) -> str | None:
        request_id, trace, log = ctx.request_id, ctx.trace, ctx.log
        outcome.prepare(ctx)
        handler: Handler = getattr(type(self), spec.method)
        scope = anyio.CancelScope(deadline=anyio.current_time() + ctx.remaining())
        work: Work | None = self.inflight.add(request_id, scope) if isinstance(
            request, Request) else None
        ctx._work = work

        def internal() -> RagbusError:
            return RagbusError(f"internal error in {self.name}; see its logs for trace "
                               f"{trace.trace_id}", trace_id=trace.trace_id)

        try:
            with structlog.contextvars.bound_contextvars(
                request_id=request_id, actor=self.name, trace_id=trace.trace_id
            ):
                with scope:
                    result = await handler(self, request, ctx)
                if scope.cancelled_caught:
                    if work is not None and work.stopping:
                        stopped = UnavailableError(
                            f"{self.name} stopped before finishing; retry",
                            trace_id=trace.trace_id)
                        return await outcome.stopped(stopped, ctx, request, reply_to)
                    if work is not None and work.cancel_requested:
                        return await outcome.cancelled(ctx, request, reply_to, work.reason)
                    late = DeadlineExceededError(
                        "the deadline passed while the request was handled",
                        trace_id=trace.trace_id)
                    return await outcome.failed(late, ctx, request_id, reply_to, log,
                                                request=request)
                await outcome.done(result)
                return None
        except RagbusError as exc:
            exc.trace_id = exc.trace_id or trace.trace_id
            return await outcome.failed(exc, ctx, request_id, reply_to, log, request=request,
                                        raised=True)
        except ExceptionGroup as group:
            # a handler's task group wraps what its children raised; a coded error inside
            # is still the answer (a fan-out's BAD_REQUEST must not become INTERNAL)
            coded = _first_coded(group)
            if coded is None:
                log.exception("handler.failed")
                coded = internal()
            coded.trace_id = coded.trace_id or trace.trace_id
            return await outcome.failed(coded, ctx, request_id, reply_to, log, request=request,
                                        raised=True)
        except anyio.get_cancelled_exc_class():
            # shutdown: tell the requester now rather than let it wait for its deadline
            with anyio.CancelScope(shield=True):
                await outcome.stopped(
                    UnavailableError(f"{self.name} stopped before finishing; retry",
                                     trace_id=trace.trace_id), ctx, request, reply_to)
            raise
        except TRANSIENT as exc:
            # the cluster outlasted a handler's own retries (an election, a lost node):
            # the request may succeed again soon, so say so rather than INTERNAL
            log.warning("handler.unavailable", error=repr(exc))
            unavailable = UnavailableError(
                f"{self.name} could not reach JetStream (the NATS cluster may be electing "
                "a leader); retry", trace_id=trace.trace_id)
            return await outcome.failed(unavailable, ctx, request_id, reply_to, log,
                                        request=request, raised=True)
        except Exception:
            log.exception("handler.failed")
            return await outcome.failed(internal(), ctx, request_id, reply_to, log,
                                        request=request, raised=True)
        finally:
            if work is not None:
                self.inflight.remove(work)

    async def job_failed(self, request: Message, ctx: Context, error: RagbusError, *,
                         retrying: bool) -> None:
        """A durable endpoint's message failed: record why before it is nak'ed
        (``retrying``) or terminated. Override to keep a job's state; runs shielded."""

    async def _reply_cancelled(self, reply: str | None, ctx: Context, reply_to: str | None,
                               reason: str, spec: EndpointSpec) -> str:
        code = ErrorCode.CANCELLED
        self.metrics.errors.labels(self.name, spec.name, code.value).inc()
        ctx.log.info("request.cancelled", reason=reason)
        await ctx.audit("request.cancelled", outcome="cancelled", code=code.value,
                        subject=spec.name, details={"reason": reason},
                        sizes={"partial_text_length": ctx.partial_text_length,
                               "tokens_used": ctx.tokens_used})
        if reply:
            body = ErrorReply(code=code, message=f"cancelled{': ' + reason if reason else ''}",
                              request_id=ctx.request_id, trace_id=ctx.trace.trace_id)
            await self._publish_error(reply, body)
        if reply_to:
            await self._safe_publish(reply_to, codec.encode(Cancelled(
                request_id=ctx.request_id, partial_text_length=ctx.partial_text_length,
                tokens_used=ctx.tokens_used)))
        return code.value

    async def _reply_error(self, reply: str | None, err: RagbusError, request_id: str | None,
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
        if reply:
            await self._publish_error(reply, err.to_reply(request_id))
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


@dataclass(slots=True)
class _Consumers:
    """The durable endpoints' fetch loops, stopped before in-flight work drains."""

    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    done: anyio.Event = field(default_factory=anyio.Event)

    async def stop(self) -> None:
        self.scope.cancel()
        await self.done.wait()


@dataclass(frozen=True, slots=True)
class _Route:
    """An endpoint's subject: its discovery counters and its metric series."""

    counters: EndpointCounters
    messages: Any
    latency: Any
    adaptive: AdaptiveLimit | None = None
    limit_gauge: Any = None


class _Outcome:
    """Where a message's end goes: a reply on core NATS, or a JetStream acknowledgement."""

    def __init__(self, actor: Actor, spec: EndpointSpec, msg: Msg) -> None:
        self.actor, self.spec, self.msg = actor, spec, msg

    def default_timeout_s(self) -> float:
        return self.actor.settings.runtime.default_timeout_s

    def prepare(self, ctx: Context) -> None:
        """Fill in what the handler should know about the delivery."""

    async def accepted(self, ctx: Context) -> None:
        """The message is valid and its handler starts (``endpoint(accept=True)``)."""

    async def done(self, result: Message | None) -> None:
        raise NotImplementedError

    async def failed(self, err: RagbusError, ctx: Context | None, request_id: str | None,
                     reply_to: str | None, log: Any | None, *, request: Message | None = None,
                     raised: bool = False) -> str:
        """``raised``: the handler raised it (a peer's failure may pass); otherwise the
        message itself cannot be handled (malformed, expired, over its deadline)."""
        raise NotImplementedError

    async def cancelled(self, ctx: Context, request: Message, reply_to: str | None,
                        reason: str) -> str:
        raise NotImplementedError

    async def stopped(self, err: UnavailableError, ctx: Context, request: Message,
                      reply_to: str | None) -> str:
        raise NotImplementedError


class _Reply(_Outcome):
    """Core request/reply: the result, or an error reply, to the message's reply subject
    (and a ``failed``/``cancelled`` event to a streamed request's ``reply_to``). An
    ``accept`` endpoint's reply subject gets its :class:`Accepted` and nothing after."""

    def __init__(self, actor: Actor, spec: EndpointSpec, msg: Msg) -> None:
        super().__init__(actor, spec, msg)
        self.reply: str | None = msg.reply or None

    async def accepted(self, ctx: Context) -> None:
        if self.spec.accept and self.reply:
            reply, self.reply = self.reply, None
            await self.actor._safe_publish(reply, codec.encode(Accepted(
                request_id=ctx.request_id, actor=self.actor.name, instance=self.actor.id)))

    async def done(self, result: Message | None) -> None:
        if self.reply and result is not None:
            await self.actor.nc.publish(self.reply, codec.encode(result))

    async def failed(self, err: RagbusError, ctx: Context | None, request_id: str | None,
                     reply_to: str | None, log: Any | None, *, request: Message | None = None,
                     raised: bool = False) -> str:
        return await self.actor._reply_error(self.reply, err, request_id, reply_to,
                                             self.spec, log)

    async def cancelled(self, ctx: Context, request: Message, reply_to: str | None,
                        reason: str) -> str:
        return await self.actor._reply_cancelled(self.reply, ctx, reply_to, reason, self.spec)

    async def stopped(self, err: UnavailableError, ctx: Context, request: Message,
                      reply_to: str | None) -> str:
        return await self.actor._reply_error(self.reply, err, ctx.request_id, reply_to,
                                             self.spec, ctx.log)


#: a peer's failure that may pass: the message is worth another delivery
_RETRIABLE = frozenset({ErrorCode.UNAVAILABLE, ErrorCode.DEADLINE_EXCEEDED,
                        ErrorCode.OVERLOADED, ErrorCode.RATE_LIMIT})


class _Ack(_Outcome):
    """A JetStream work queue: ack when done, nak to retry or hand over, term when failed
    for good (after :meth:`Actor.job_failed` has recorded why). The message's own reply
    subject is its acknowledgement, so errors never go there."""

    def __init__(self, actor: Actor, spec: EndpointSpec, msg: Msg, durable: Durable) -> None:
        super().__init__(actor, spec, msg)
        self.durable = durable
        self.attempt = msg.metadata.num_delivered if msg.metadata else 1

    def default_timeout_s(self) -> float:
        return self.durable.timeout_s

    def prepare(self, ctx: Context) -> None:
        ctx.attempt = self.attempt
        ctx.final_attempt = self.attempt >= self.durable.max_deliver

    async def done(self, result: Message | None) -> None:
        await self.msg.ack()

    async def failed(self, err: RagbusError, ctx: Context | None, request_id: str | None,
                     reply_to: str | None, log: Any | None, *, request: Message | None = None,
                     raised: bool = False) -> str:
        retrying = (raised and err.code in _RETRIABLE
                    and self.attempt < self.durable.max_deliver)
        code = await self.actor._reply_error(None, err, request_id, reply_to, self.spec, log)
        with anyio.CancelScope(shield=True):
            if ctx is not None and request is not None:
                await self._record(request, ctx, err, retrying)
            if retrying:
                await self.msg.nak(delay=min(30.0, 2.0 ** self.attempt))
            else:
                await self.msg.term()
        (log or self.actor.log).warning("job.failed", code=code, attempt=self.attempt,
                                        will_retry=retrying)
        return code

    async def cancelled(self, ctx: Context, request: Message, reply_to: str | None,
                        reason: str) -> str:
        code = await self.actor._reply_cancelled(None, ctx, reply_to, reason, self.spec)
        with anyio.CancelScope(shield=True):
            cancelled = RequestCancelledError(f"cancelled: {reason or 'on request'}",
                                              trace_id=ctx.trace.trace_id)
            await self._record(request, ctx, cancelled, False)
            await self.msg.term()
        return code

    async def stopped(self, err: UnavailableError, ctx: Context, request: Message,
                      reply_to: str | None) -> str:
        with anyio.CancelScope(shield=True):
            await self.msg.nak()  # another replica takes it now
        ctx.log.info("job.handed_back", attempt=self.attempt)
        return err.code.value

    async def _record(self, request: Message, ctx: Context, err: RagbusError,
                      retrying: bool) -> None:
        try:
            await self.actor.job_failed(request, ctx, err, retrying=retrying)
        except Exception:  # recording must not keep the message from being settled
            ctx.log.exception("job.record_failed")


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


def _publishable(subject: str) -> bool:
    try:
        msgspec.convert(subject, ReplySubject)
    except msgspec.ValidationError:
        return False
    return True


def _loose(data: bytes) -> _Loose:
    try:
        raw: _Raw = codec.decode(data, _Raw)
    except msgspec.DecodeError:
        return _Loose()
    request_id = raw.request_id if isinstance(raw.request_id, str) else None
    reply_to = raw.reply_to if isinstance(raw.reply_to, str) else None
    if reply_to is not None and not _publishable(reply_to):
        reply_to = None
    trace_id = raw.trace.get("trace_id") if isinstance(raw.trace, dict) else None
    return _Loose(request_id, reply_to, trace_id if isinstance(trace_id, str) else None)
