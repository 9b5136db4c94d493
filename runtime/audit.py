"""Publishing audit events: masked, bounded, never in a request's way.

A handler hands an event over and goes on: it waits at most
``audit.enqueue_timeout_ms`` for room in a bounded queue. Workers publish to
JetStream with ``Nats-Msg-Id`` = event id and retry until the server
acknowledges, so a lost acknowledgement costs a retry, never a second copy (the
server drops repeats inside the stream's duplicate window, which the settings
keep longer than the retry period). When the actor stops, what is still queued
gets ``audit.flush_timeout_s`` to go out; anything dropped is counted and logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Iterable
from typing import Any, TypedDict, Unpack

import anyio
import msgspec
import nats.errors
import structlog
from anyio.abc import TaskStatus
from nats.aio.client import Client as NATS
from nats.js.api import StreamConfig
from nats.js.client import JetStreamContext
from prometheus_client import Counter, Gauge, Histogram

from ragbus.config import MASK, Secret, Settings, secret_values
from ragbus.subjects import MSG_ID_HEADER, AuditEvent, AuditOutcome, Subjects, audit_stream

from ._pii import PiiMasker
from .jetstream import ensure_stream
from .metrics import Metrics
from .security import audit_role_of

__all__ = (
    "AuditFields",
    "AuditPublisher",
    "PiiMasker",
    "audit_stream_config",
    "config_summary",
    "ensure_audit_stream",
)

_encoder = msgspec.json.Encoder()
_WORKERS = 4  # each publishes a share of publish_in_flight at once, pipelined
# the warning that hashed text is unkeyed is said once per process, not once per actor
_unkeyed_warned = False


class AuditFields(TypedDict, total=False):
    """What a caller may say about an audited action (see ``AuditEvent``)."""

    request_id: str | None
    trace_id: str | None
    session: str | None
    subject: str | None
    outcome: AuditOutcome | str
    code: str | None
    duration_ms: float | None
    sizes: dict[str, int]
    question: str | None
    answer: str | None
    details: dict[str, Any]


def audit_stream_config(settings: Settings) -> StreamConfig:
    a = settings.audit
    return audit_stream(Subjects(settings.subject_prefix), max_age_s=a.max_age_s,
                        max_bytes=a.max_bytes, duplicate_window_s=a.duplicate_window_s)


def config_summary(settings: Settings) -> dict[str, Any]:
    """What a ``config.loaded`` event says: a digest of the settings and the choices an
    auditor asks about first. Secrets are masked before hashing: a digest must not
    let anyone test a guessed password, so a changed secret leaves it unchanged."""
    shown = msgspec.json.encode(msgspec.to_builtins(settings, enc_hook=_masked))
    return {
        "sha256": hashlib.sha256(shown).hexdigest(),
        "environment": settings.environment,
        "subject_prefix": settings.subject_prefix,
        "audit_text": settings.audit.text,
        # getattr until Settings.security is wired in (issue #6)
        "security": bool(getattr(getattr(settings, "security", None), "enabled", False)),
    }


def _masked(value: Any) -> Any:
    if isinstance(value, Secret):
        return MASK
    raise NotImplementedError(f"cannot encode {type(value).__name__}")


async def ensure_audit_stream(nc: NATS, settings: Settings) -> None:
    """Create or update the audit stream (idempotent; replicas may race)."""
    await ensure_stream(nc, audit_stream_config(settings), replicas=settings.nats.replicas)


class AuditPublisher:
    """One per actor (or client). ``run`` must be running for events to leave.

    Events go out on ``<prefix>.audit.<role>.<kind>``, ``role`` being the bus role the
    publisher logs in as (by default the actor's, see ``security.audit_role_of``): the
    bus lets each role publish there only, and the audit-logger keeps an event only if
    its ``actor`` belongs to that role. Every ``Secret`` in ``settings`` is masked
    wherever it appears, plus ``secrets``.
    """

    def __init__(self, settings: Settings, *, actor: str, instance: str | None = None,
                 metrics: Metrics | None = None, secrets: Iterable[str] = (),
                 role: str | None = None) -> None:
        self.settings = settings
        self.config = settings.audit
        self.subjects = Subjects(settings.subject_prefix)
        self.actor = actor
        self.role = role or audit_role_of(actor)
        self.subjects.audit(self.role, "x")  # refuses a role that is not a subject token
        self.instance = instance
        self.masker = PiiMasker([*secret_values(settings), *secrets])
        key = self.config.hash_key
        self._hash_key = key.get().encode() if key is not None else None
        self._send, self._receive = anyio.create_memory_object_stream[AuditEvent](
            self.config.queue_size)
        self._unsent: list[AuditEvent] = []
        self._outstanding = 0
        # made when first awaited: an Event needs a running loop, a publisher may not have one
        self._idle: anyio.Event | None = None
        self._space: anyio.Event | None = None
        self._running = False
        self._finished = False
        metrics = metrics or Metrics()
        results = metrics.get(Counter, "ragbus_audit_events",
                              "Audit events by what became of them", ["actor", "result"])
        self._published = results.labels(actor, "published")
        self._dropped = results.labels(actor, "dropped")
        self._failed = results.labels(actor, "failed")
        self._retried = results.labels(actor, "retried")
        self._latency = metrics.get(Histogram, "ragbus_audit_publish_seconds",
                                    "Publishing to the stream's acknowledgement, retries included",
                                    ["actor"]).labels(actor)
        self._queued = metrics.get(Gauge, "ragbus_audit_queued",
                                   "Audit events not yet acknowledged by the stream",
                                   ["actor"]).labels(actor)
        self.log = structlog.get_logger().bind(actor=actor, component="audit")

    # -- building ---------------------------------------------------------------------
    def event(self, kind: str, **fields: Unpack[AuditFields]) -> AuditEvent:
        """An event with personal data masked and text kept as ``audit.text`` says."""
        self.subjects.audit(self.role, kind)  # refuses a kind that is not a valid subject
        mask = self.masker.mask_text
        question, answer = fields.get("question"), fields.get("answer")
        sizes = dict(fields.get("sizes") or {})
        text_mode = None
        if question is not None or answer is not None:
            text_mode = self.config.text
            if question is not None:
                sizes.setdefault("question_chars", len(question))
            if answer is not None:
                sizes.setdefault("answer_chars", len(answer))
        return AuditEvent(
            kind=kind,
            actor=self.actor,
            instance=self.instance,
            request_id=_opt(mask, fields.get("request_id")),
            trace_id=_opt(mask, fields.get("trace_id")),
            session=_opt(mask, fields.get("session")),
            subject=_opt(mask, fields.get("subject")),
            outcome=AuditOutcome(fields.get("outcome", AuditOutcome.OK)),
            code=_opt(mask, fields.get("code")),
            duration_ms=fields.get("duration_ms"),
            sizes=sizes,
            text_mode=text_mode,
            question=self._text(question),
            answer=self._text(answer),
            details=self.masker.mask(fields.get("details") or {}),
        )

    def warn_if_unkeyed(self) -> None:
        """Say once per process that hashed text has no key (development only: production
        refuses to start without ``audit.hash_key``). The value's ``sha256:`` prefix says it
        in every event too; an HMAC's is ``hmac-sha256:``."""
        global _unkeyed_warned
        c = self.config
        if _unkeyed_warned or not c.enabled or c.text != "hashed" or c.hash_key is not None:
            return
        _unkeyed_warned = True
        self.log.warning("audit.unkeyed_hash",
                         hint="question and answer text is kept as plain SHA-256, which "
                              "anyone can match against guessed questions: set "
                              "audit.hash_key (RAGBUS_AUDIT__HASH_KEY) to a random secret")

    def keep_text(self, value: str | None) -> str | None:
        """``value`` as ``audit.text`` keeps question and answer text (masked, hashed or
        left out): for other free text a person typed, such as a feedback comment."""
        return self._text(value)

    def _text(self, value: str | None) -> str | None:
        if value is None or self.config.text == "omitted":
            return None
        masked = self.masker.mask_text(value)
        if self.config.text == "full":
            return masked
        if self._hash_key is not None:
            return "hmac-sha256:" + hmac.new(self._hash_key, masked.encode(),
                                             hashlib.sha256).hexdigest()
        return "sha256:" + hashlib.sha256(masked.encode()).hexdigest()

    # -- handing over -----------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Events handed over and not yet acknowledged by the stream (or given up)."""
        return self._outstanding

    async def emit(self, kind: str, **fields: Unpack[AuditFields]) -> bool:
        """Queue an event; False if auditing is off or the queue stayed full (dropped)."""
        if not self.config.enabled:
            return False
        return await self.put(self.event(kind, **fields))

    def emit_nowait(self, kind: str, **fields: Unpack[AuditFields]) -> bool:
        """Queue an event without waiting at all (for code that cannot await)."""
        if not self.config.enabled:
            return False
        return self._offer(self.event(kind, **fields))

    async def put(self, event: AuditEvent) -> bool:
        """Queue ``event``, waiting at most ``audit.enqueue_timeout_ms`` for room."""
        if self._offer(event, count_drop=False):
            return True
        deadline = anyio.current_time() + self.config.enqueue_timeout_ms / 1000
        while not self._finished and anyio.current_time() < deadline:
            # wait for a worker to take something (no item changes hands while waiting, so
            # a timeout here can never half-send one)
            if self._space is None:
                self._space = anyio.Event()
            with anyio.move_on_after(deadline - anyio.current_time()):
                await self._space.wait()
            if self._offer(event, count_drop=False):
                return True
        self._drop(event, "the audit queue stayed full (audit.queue_size)"
                   if not self._finished else "the publisher has stopped")
        return False

    def _offer(self, event: AuditEvent, *, count_drop: bool = True) -> bool:
        if self._finished:
            if count_drop:
                self._drop(event, "the publisher has stopped")
            return False
        try:
            self._send.send_nowait(event)
        except anyio.WouldBlock:
            if count_drop:
                self._drop(event, "the audit queue is full (audit.queue_size)")
            return False
        self._hold()
        return True

    def _hold(self) -> None:
        if not self._outstanding:
            self._idle = None
        self._outstanding += 1
        self._queued.inc()

    def _settle(self) -> None:
        self._outstanding -= 1
        self._queued.dec()
        if not self._outstanding and self._idle is not None:
            self._idle.set()

    def _drop(self, event: AuditEvent, why: str) -> None:
        self._dropped.inc()
        self.log.warning("audit.dropped", kind=event.kind, event_id=event.event_id, reason=why)

    async def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued event is acknowledged; False if time ran out."""
        if not self._outstanding:
            return True
        if self._idle is None:
            self._idle = anyio.Event()
        with anyio.move_on_after(timeout_s):
            await self._idle.wait()
            return True
        return False

    # -- publishing -------------------------------------------------------------------
    async def run(self, nc: NATS, *, ensure_stream: bool = True,
                  task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Publish until cancelled, then spend up to ``flush_timeout_s`` on what is left.

        ``ensure_stream`` creates the audit stream if it is missing; on a secured bus
        actors may not, and the audit-logger (or ``ragbus up``) does it instead. A
        second ``run`` while one runs does nothing but wait to be cancelled.
        """
        if self._running:
            # someone runs it already (the Actor base, say): this call only waits
            task_status.started()
            await anyio.sleep_forever()
        self._running = True
        self.warn_if_unkeyed()
        js = nc.jetstream(timeout=self.config.publish_timeout_s)
        if ensure_stream and self.config.enabled:
            await self._ensure_stream(nc)  # first: once started, events have somewhere to go
        task_status.started()
        try:
            async with anyio.create_task_group() as tg:
                for _ in range(_WORKERS):
                    tg.start_soon(self._worker, nc, js)
        finally:
            self._finished = True
            with anyio.CancelScope(shield=True) as scope:
                scope.deadline = anyio.current_time() + self.config.flush_timeout_s
                await self._flush_left(nc, js)
            self._give_up_on_rest()

    async def _ensure_stream(self, nc: NATS) -> None:
        try:
            with anyio.fail_after(self.config.publish_timeout_s):
                await ensure_audit_stream(nc, self.settings)
        except Exception as exc:  # events wait (and retry) until someone makes it
            self.log.warning("audit.stream_not_ensured", error=str(exc) or type(exc).__name__)

    async def _worker(self, nc: NATS, js: JetStreamContext) -> None:
        """Take what is queued (up to a share of ``publish_in_flight``), publish it all
        pipelined, wait for the acknowledgements together."""
        share = max(1, self.config.publish_in_flight // _WORKERS)
        while True:
            batch = [await self._receive.receive()]
            while len(batch) < share:
                try:
                    batch.append(self._receive.receive_nowait())
                except anyio.WouldBlock:
                    break
            if self._space is not None:
                self._space.set()
                self._space = None
            await self._publish_all(nc, js, batch)

    async def _flush_left(self, nc: NATS, js: JetStreamContext) -> None:
        left, self._unsent = self._unsent, []
        while True:
            try:
                left.append(self._receive.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream):
                break
        if not nc.is_closed and left:
            await self._publish_all(nc, js, left, retry=False)

    def _give_up_on_rest(self) -> None:
        left = list(self._unsent)
        self._unsent.clear()
        while True:
            try:
                left.append(self._receive.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream):
                break
        for event in left:
            self._settle()
            self._drop(event, "the actor stopped before the stream acknowledged it")

    async def _publish_all(self, nc: NATS, js: JetStreamContext, events: list[AuditEvent], *,
                           retry: bool = True) -> None:
        """Publish until each event is acknowledged or its retry period is over.

        Anything unacknowledged when this is cancelled goes back to ``_unsent`` for
        the flush on the way out (publishing it again is safe: same message id).
        """
        todo = [(e, _encoder.encode(e), self.subjects.audit(self.role, e.kind)) for e in events]
        started = time.monotonic()
        give_up = started + (self.config.publish_retry_s if retry else 0.0)
        delay = 0.05
        futures: list[asyncio.Future[Any]] = []
        try:
            while todo:
                futures = []
                for event, data, subject in todo:
                    try:
                        futures.append(await js.publish_async(
                            subject, data, headers={MSG_ID_HEADER: event.event_id}))
                    except nats.errors.Error as exc:  # closed, reconnecting, buffer full
                        failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                        failed.set_exception(exc)
                        futures.append(failed)
                await asyncio.wait(futures, timeout=self.config.publish_timeout_s)
                again = []
                error = ""
                for item, future in zip(todo, futures, strict=True):
                    if future.done() and not future.cancelled() and future.exception() is None:
                        self._settle()
                        self._published.inc()
                        self._latency.observe(time.monotonic() - started)
                        continue
                    if not future.done():
                        future.cancel()  # frees nats-py's slot; the retry has its own
                        error = "TimeoutError"
                    elif not future.cancelled():
                        error = type(future.exception()).__name__
                    again.append(item)
                todo, futures = again, []
                if not todo:
                    return
                if nc.is_closed or time.monotonic() + delay > give_up:
                    for event, _, _ in todo:
                        self._settle()
                        self._failed.inc()
                        self.log.error("audit.publish_failed", kind=event.kind,
                                       event_id=event.event_id, error=error)
                    return
                self._retried.inc(len(todo))
                await anyio.sleep(delay)
                delay = min(delay * 2, 1.0)
        except BaseException:
            for future in futures:
                future.cancel()
            self._unsent.extend(event for event, _, _ in todo)
            raise


def _opt(mask: Any, value: str | None) -> str | None:
    return None if value is None else str(mask(value))
