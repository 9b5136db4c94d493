"""One WebSocket: who it is, what it asked, and a writer that never holds up the bus.

A socket runs in one task group: a reader that handles client frames, a writer
that takes frames from the :class:`Outbox`, and one task per ask that reads its
events (``runtime.Client.open_stream``: deadline, cancel and "nobody serves
queries" are the kernel's) and puts their frames into the outbox, never waiting
on the socket. When the socket closes, for whatever reason, the task group is
cancelled and every ask it started is cancelled on the bus: nothing keeps
generating for a reader who is gone.
"""

from __future__ import annotations

import socket
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import msgspec
import nats.errors
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from ragbus.runtime import (
    ACCEPT_WAIT_S,
    EventStream,
    RagbusError,
    UnavailableError,
    codec,
    decode_reply,
    tracing,
)
from ragbus.runtime.ingest import follow_job, job_exists
from ragbus.subjects import (
    Cancelled,
    Done,
    ErrorCode,
    Failed,
    Feedback,
    FeedbackRecorded,
    Query,
    QueryEvent,
    SessionDelete,
    SessionDeleted,
    Sources,
    Token,
    Trace,
    new_id,
    now_ms,
)

from ._auth import Identity
from ._errors import AuthDeniedError, UnauthenticatedError
from ._limits import Denied, LimitState
from ._outbox import Outbox, TokenStream
from ._protocol import (
    AskFrame,
    AuthFrame,
    CancelFrame,
    CancelledFrame,
    CloseCode,
    DoneFrame,
    ErrorFrame,
    FailedFrame,
    FeedbackFrame,
    FeedbackRecordedFrame,
    FollowFrame,
    ForgetFrame,
    ForgottenFrame,
    JobFrame,
    LimitsFrame,
    ReadyFrame,
    ServerFrame,
    SourcesFrame,
    StatusFrame,
    StatusRequest,
    decode_client_frame,
    encode_frame,
    loose_id,
)

if TYPE_CHECKING:
    from ._actor import Bridge

__all__ = ("Ask", "Session")

_NORMAL_CLOSE = 1000
_RATED = 256  # answers per socket that may still be rated (the newest)
_FEEDBACK_TIMEOUT_S = 5.0
_FORGET_TIMEOUT_S = 5.0
_MAX_FORGETTING = 4  # forget requests one socket has on the bus at once
_MAX_FOLLOWED = 16  # ingest jobs one socket follows at once


@dataclass(slots=True, eq=False)
class Ask:
    """One question in flight on one socket."""

    id: str
    request_id: str
    identity: str
    session: Session
    started: float                 # time.perf_counter()
    stream: TokenStream
    session_id: str | None = None  # as sent on the bus (scoped to the identity)
    chars: int = 0                 # answer text relayed to the client
    tokens: int = 0                # token events relayed
    first_token_at: float | None = None
    cancel_requested: bool = False
    finished: bool = False
    events: EventStream | None = None


def _limits(state: LimitState) -> LimitsFrame:
    return LimitsFrame(limit=state.limit, remaining=state.remaining,
                       reset_in_seconds=state.reset_in_seconds,
                       concurrent_limit=state.concurrent_limit, in_flight=state.in_flight)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


class Session:
    def __init__(self, bridge: Bridge, ws: ServerConnection) -> None:
        self.bridge = bridge
        self.ws = ws
        self.config = bridge.config
        self.identity: Identity | None = None
        self.asks: dict[str, Ask] = {}
        # answers this socket received, which it may rate: request id -> session id
        self.answered: OrderedDict[str, str | None] = OrderedDict()
        self.following: set[str] = set()  # ingest jobs whose progress is relayed
        self.forgetting = 0  # forget requests waiting for the trimmer
        self.outbox = Outbox(self.config.max_buffered_bytes, self._overflow)
        self.address = str((ws.remote_address or ("unknown",))[0])
        self.origin = ws.request.headers.get("Origin") if ws.request is not None else None
        self.sending_since: float | None = None  # when the send in progress began
        self._scope: anyio.CancelScope | None = None
        self._close: tuple[int, str, str] | None = None  # code, reason, metric label

    # -- the socket's life ----------------------------------------------------------------
    async def serve(self) -> None:
        b = self.bridge
        try:
            identity = await self._authenticate()
        except AuthDeniedError as exc:
            b.on_denied(exc, origin=self.origin, address=self.address)
            b.count_close(exc.label)
            await self._close_socket(exc.code, exc.close_reason)
            return
        except ConnectionClosed:
            return
        if identity is None:  # the client left before saying who it is
            return
        await self._set_identity(identity)
        async with anyio.create_task_group() as tg:
            self._scope = tg.cancel_scope
            tg.start_soon(self._write)
            if identity.expires_at is not None:
                tg.start_soon(self._expire, identity)
            await self._read(tg)
            tg.cancel_scope.cancel()
        code, reason, label = self._close or (_NORMAL_CLOSE, "", "client")
        b.count_close(label)
        await self._close_socket(code, reason)

    async def _close_socket(self, code: int, reason: str) -> None:
        # close() waits for the write buffer to drain before its own timeout starts, so a
        # peer that reads nothing would hold it forever: bound it, then drop the connection
        with anyio.move_on_after(self.config.close_timeout_s, shield=True) as scope:
            await self.ws.close(code, reason)
        if scope.cancelled_caught:
            self.ws.transport.abort()

    def _abort(self, code: CloseCode, reason: str, label: str) -> None:
        """End the socket from anywhere (the bus callback included): cancel its tasks."""
        if self._close is None:
            self._close = (int(code), reason, label)
        if self._scope is not None:
            self._scope.cancel()

    def shutdown(self) -> None:
        """The bridge is stopping: close with 1001 (its asks are cancelled on the way)."""
        self._abort(CloseCode.GOING_AWAY, "the bridge is stopping: reconnect", "shutdown")

    def _overflow(self) -> None:
        self._abort(CloseCode.SLOW_READER,
                    f"slow reader: over {self.config.max_buffered_bytes} bytes waiting "
                    "to be read (bridge.max_buffered_bytes)", "slow_reader")

    async def _expire(self, identity: Identity) -> None:
        assert identity.expires_at is not None
        await anyio.sleep(max(0.0, identity.expires_at + self.config.jwt_leeway_s - time.time()))
        if self.identity is identity:
            self._abort(CloseCode.UNAUTHORIZED, "token expired: reconnect with a new one",
                        "token_expired")

    # -- auth ------------------------------------------------------------------------------
    async def _authenticate(self) -> Identity | None:
        auth = self.bridge.auth
        request = self.ws.request
        assert request is not None
        auth.check_origin(self.origin)
        presented = auth.presented(request.headers, request.path)
        if presented is not None:
            return auth.verify(presented)
        if auth.anonymous_allowed:
            return auth.anonymous(self.address)
        timeout = self.config.auth_timeout_s
        with anyio.move_on_after(timeout):
            raw = await self.ws.recv(decode=False)
            try:
                frame = decode_client_frame(raw)
            except msgspec.DecodeError:
                frame = None
            if not isinstance(frame, AuthFrame):
                raise UnauthenticatedError("credentials required: the first frame must be "
                                      '{"type": "auth", "token": ...}, or use ?token=')
            return auth.verify(frame.token)
        raise UnauthenticatedError(f"no credentials within {timeout:g}s: send an auth frame "
                              "first, or use ?token=")

    async def _set_identity(self, identity: Identity) -> None:
        self.identity = identity
        try:
            state = await self.bridge.limits.state(identity.key)
        except UnavailableError as exc:  # the socket is ready; its asks will say why not
            self.bridge.log.warning("bridge.limits_unknown", error=exc.message)
            state = LimitState(limit=self.config.asks_per_minute, remaining=0,
                               reset_in_seconds=0.0,
                               concurrent_limit=self.config.concurrent_asks, in_flight=0)
        self._send(ReadyFrame(identity=identity.key, method=identity.method,
                              expires_at=identity.expires_at,
                              max_question_chars=self.config.max_question_chars,
                              limits=_limits(state)))

    # -- reading -----------------------------------------------------------------------------
    async def _read(self, tg: anyio.abc.TaskGroup) -> None:
        try:
            while True:
                await self.outbox.wait_for_room()  # a client that does not read, is not read
                raw = await self.ws.recv(decode=False)
                await self._on_frame(raw, tg)
        except ConnectionClosed:
            return

    async def _on_frame(self, raw: bytes, tg: anyio.abc.TaskGroup) -> None:
        limit = self.config.max_frame_bytes
        if len(raw) > limit:
            self._error(ErrorCode.TOO_LARGE,
                        f"frame is {len(raw)} bytes; the limit is {limit} "
                        "(bridge.max_frame_bytes)", {"size": len(raw), "limit": limit},
                        loose_id(raw))
            return
        try:
            frame = decode_client_frame(raw)
        except msgspec.DecodeError as exc:
            self._error(ErrorCode.BAD_REQUEST,
                        f"invalid frame: {exc}. Frames are JSON objects with a type: ask, "
                        "cancel, feedback, forget, status, follow or auth", {}, loose_id(raw))
            return
        if isinstance(frame, AskFrame):
            await self._ask(frame, tg)
        elif isinstance(frame, FollowFrame):
            await self._follow(frame, tg)
        elif isinstance(frame, CancelFrame):
            await self._cancel(frame)
        elif isinstance(frame, FeedbackFrame):
            self._feedback(frame, tg)
        elif isinstance(frame, ForgetFrame):
            if self.forgetting >= _MAX_FORGETTING:  # not rate limited like asks: bounded
                self._error(ErrorCode.RATE_LIMIT, f"a socket may forget {_MAX_FORGETTING} "
                            "sessions at once: wait for a reply", {"limit": _MAX_FORGETTING},
                            frame.id)
                return
            self.forgetting += 1
            tg.start_soon(self._forget, frame)
        elif isinstance(frame, StatusRequest):
            assert self.identity is not None
            try:
                state = await self.bridge.limits.state(self.identity.key)
            except UnavailableError as exc:
                self._error(ErrorCode.UNAVAILABLE, exc.message, {}, None)
                return
            self._send(StatusFrame(limit=state.limit, remaining=state.remaining,
                                   reset_in_seconds=state.reset_in_seconds,
                                   concurrent_limit=state.concurrent_limit,
                                   in_flight=state.in_flight))
        else:
            await self._reauthenticate(frame, tg)

    async def _follow(self, frame: FollowFrame, tg: anyio.abc.TaskGroup) -> None:
        """Relay a job's progress (a job id is hard to guess: knowing it is enough)."""
        if frame.job_id in self.following:
            return  # already sent
        if len(self.following) >= _MAX_FOLLOWED:
            self._error(ErrorCode.TOO_LARGE, f"a socket follows at most {_MAX_FOLLOWED} jobs "
                        "at once", {"limit": _MAX_FOLLOWED}, None)
            return
        self.following.add(frame.job_id)
        tg.start_soon(self._relay_job, frame.job_id)

    async def _relay_job(self, job_id: str) -> None:
        b = self.bridge
        try:
            if not await job_exists(b.nc, job_id, b.subjects):
                self._error(ErrorCode.NOT_FOUND, f"no ingest job {job_id!r}",
                            {"job_id": job_id}, None)
                return
            async for p in follow_job(b.nc, job_id, b.subjects,
                                      timeout_s=self.config.follow_timeout_s):
                self._send(JobFrame(job_id=job_id, state=p.state, progress=p.progress,
                                    files_done=p.files_done, files_total=p.files_total,
                                    docs_done=p.docs_done, chunks_done=p.chunks_done,
                                    chunks_total=p.chunks_total, errors=p.errors,
                                    message=p.message, finished=p.finished))
        except TimeoutError:
            self._error(ErrorCode.DEADLINE_EXCEEDED,
                        f"job {job_id} did not finish within {self.config.follow_timeout_s:g}s "
                        "(bridge.follow_timeout_s): follow it again", {"job_id": job_id}, None)
        except (OSError, nats.errors.Error) as exc:
            b.log.warning("bridge.follow_failed", job_id=job_id, error=repr(exc))
            self._error(ErrorCode.UNAVAILABLE, "the bridge cannot read the job's progress; "
                        "follow it again", {"job_id": job_id}, None)
        finally:
            self.following.discard(job_id)

    async def _reauthenticate(self, frame: AuthFrame, tg: anyio.abc.TaskGroup) -> None:
        """A later ``auth`` frame switches the socket's identity (e.g. a fresh JWT)."""
        try:
            identity = self.bridge.auth.verify(frame.token)
        except AuthDeniedError as exc:
            self.bridge.on_denied(exc, origin=self.origin, address=self.address)
            self._abort(exc.code, exc.close_reason, exc.label)
            return
        await self._set_identity(identity)
        if identity.expires_at is not None:
            tg.start_soon(self._expire, identity)

    # -- asks ----------------------------------------------------------------------------------
    async def _ask(self, frame: AskFrame, tg: anyio.abc.TaskGroup) -> None:
        b = self.bridge
        identity = self.identity
        assert identity is not None
        if not b.accepting:
            self._error(ErrorCode.UNAVAILABLE, "the bridge is stopping: reconnect and ask again",
                        {}, frame.id)
            return
        if not frame.question.strip():
            self._error(ErrorCode.BAD_REQUEST, "the question is empty", {}, frame.id)
            return
        limit = self.config.max_question_chars
        if len(frame.question) > limit:
            self._error(ErrorCode.TOO_LARGE,
                        f"the question is {len(frame.question)} characters; the limit is "
                        f"{limit}: shorten it", {"size": len(frame.question), "limit": limit},
                        frame.id)
            return
        if frame.id in self.asks:
            self._error(ErrorCode.BAD_REQUEST,
                        f"ask {frame.id!r} is still running: give each ask a new id", {},
                        frame.id)
            return
        request_id = new_id()
        try:
            admitted = await b.limits.admit(identity.key, request_id)
        except UnavailableError as exc:  # closed, never open
            self._error(ErrorCode.UNAVAILABLE, exc.message, {}, frame.id)
            return
        if isinstance(admitted, Denied):
            self._refuse(frame, admitted)
            return
        session_id = self._scoped(frame.session_id) if frame.session_id else None
        ask = Ask(id=frame.id, request_id=request_id, identity=identity.key, session=self,
                  started=time.perf_counter(), stream=TokenStream(frame.id),
                  session_id=session_id)
        self.asks[ask.id] = ask
        b.open_asks[request_id] = ask
        query = Query(request_id=request_id, trace=Trace(),
                      deadline=now_ms() + int(self.config.ask_timeout_s * 1000),
                      reply_to=b.nc.new_inbox(), question=frame.question,
                      session_id=session_id, filters=frame.filters, top_k=frame.top_k)
        tg.start_soon(self._run, ask, query)

    async def _run(self, ask: Ask, query: Query) -> None:
        """Relay one ask's events until its end; leaving early cancels it on the bus."""
        b = self.bridge
        try:
            with tracing.span("bridge ask", query.trace or Trace(), identity=ask.identity,
                              request_id=ask.request_id) as span:
                query = msgspec.structs.replace(query, trace=span.trace)
                async with b.client.open_stream(b.subjects.query, query,
                                                hint="start the retriever",
                                                accept_within=ACCEPT_WAIT_S) as ask.events:
                    async for event in ask.events:
                        self.relay(ask, event)
                        if isinstance(event, Failed):
                            span.failed(event.code.value, event.message)
                        elif isinstance(event, Cancelled):
                            span.cancelled()
        except (OSError, nats.errors.Error) as exc:  # the bus is gone: say so now
            b.log.warning("bridge.publish_failed", error=str(exc), request_id=ask.request_id)
            self.finish(ask, FailedFrame(id=ask.id, request_id=ask.request_id,
                                         code=ErrorCode.UNAVAILABLE,
                                         message="the bridge cannot reach NATS; retry"),
                        "failed")
        finally:
            self.finish(ask, None, "abandoned")  # a no-op when the ask has ended

    def _refuse(self, frame: AskFrame, denied: Denied) -> None:
        state = denied.state
        details: dict[str, object] = {"limit": state.limit if denied.scope == "per_minute"
                   else state.concurrent_limit,
                   "remaining": state.remaining if denied.scope == "per_minute" else 0,
                   "reset_in_seconds": state.reset_in_seconds if denied.scope == "per_minute"
                   else denied.retry_estimate_s,
                   "scope": denied.scope}
        if denied.retry_after_s is not None:
            message = f"Rate limit exceeded. Retry after {denied.retry_after_s} seconds."
        else:
            message = (f"Rate limit exceeded: {state.concurrent_limit} asks at once is the "
                       f"limit. Retry when one has finished (about "
                       f"{denied.retry_estimate_s or 1:.1f} s).")
        self._error(ErrorCode.RATE_LIMIT, message, details, frame.id)
        self.bridge.on_rate_limited(self, denied)

    async def _cancel(self, frame: CancelFrame) -> None:
        ask = self.asks.get(frame.id)
        if ask is None:
            self._error(ErrorCode.NOT_FOUND,
                        f"no running ask {frame.id!r} (it may have just finished)", {}, frame.id)
            return
        if ask.cancel_requested or ask.events is None:
            return
        ask.cancel_requested = True
        # the actors answer with `cancelled`; if none does soon, the stream makes one up
        await ask.events.cancel("the client cancelled", wait_s=self.config.cancel_grace_s)

    # -- feedback ------------------------------------------------------------------------------
    def _feedback(self, frame: FeedbackFrame, tg: anyio.abc.TaskGroup) -> None:
        """Rate an answer this socket received; anything else is not this socket's to rate."""
        if frame.request_id not in self.answered:
            self._error(ErrorCode.NOT_FOUND,
                        f"no answer {frame.request_id!r} on this connection to rate (only "
                        f"the newest {_RATED} answers it received can be rated)", {}, frame.id)
            return
        tg.start_soon(self._send_feedback, frame, self.answered[frame.request_id])

    async def _send_feedback(self, frame: FeedbackFrame, session_id: str | None) -> None:
        b = self.bridge
        feedback = Feedback(request_id=frame.request_id, rating=frame.rating,
                            comment=frame.comment or None, session=session_id,
                            deadline=now_ms() + int(_FEEDBACK_TIMEOUT_S * 1000))
        try:
            reply = await b.nc.request(b.subjects.feedback, codec.encode(feedback),
                                       timeout=_FEEDBACK_TIMEOUT_S + 0.25)
            recorded = decode_reply(reply, FeedbackRecorded)
        except RagbusError as exc:
            self._error(exc.code, exc.message, exc.details, frame.id)
            return
        except nats.errors.NoRespondersError:
            self._error(ErrorCode.UNAVAILABLE, "feedback cannot be kept right now: the "
                        "audit-logger is not running", {}, frame.id)
            return
        except (TimeoutError, nats.errors.TimeoutError):
            self._error(ErrorCode.DEADLINE_EXCEEDED, "the feedback was not confirmed in "
                        "time; it may have been kept", {}, frame.id)
            return
        except (OSError, nats.errors.Error) as exc:
            b.log.warning("bridge.feedback_failed", error=str(exc))
            self._error(ErrorCode.UNAVAILABLE, "the bridge cannot reach NATS; retry", {},
                        frame.id)
            return
        self._send(FeedbackRecordedFrame(id=frame.id, request_id=recorded.request_id,
                                         known=recorded.known))

    # -- forgetting a conversation ----------------------------------------------------------
    def _scoped(self, session_id: str) -> str:
        """The session id on the bus: the client's, under its identity, so that no client
        can reach (ask with, or forget) another identity's conversation."""
        assert self.identity is not None
        return f"{self.identity.key}:{session_id}"

    async def _forget(self, frame: ForgetFrame) -> None:
        """Delete the memory of one of this identity's sessions, through the trimmer."""
        b = self.bridge
        request = SessionDelete(session_id=self._scoped(frame.session_id),
                                deadline=now_ms() + int(_FORGET_TIMEOUT_S * 1000))
        try:
            deleted = await b.client.request(b.subjects.session("delete"), request,
                                             SessionDeleted)
        except RagbusError as exc:  # UNAVAILABLE without a trimmer, DEADLINE_EXCEEDED, ...
            self._error(exc.code, exc.message, exc.details, frame.id)
            return
        except (OSError, nats.errors.Error) as exc:
            b.log.warning("bridge.forget_failed", error=str(exc))
            self._error(ErrorCode.UNAVAILABLE, "the bridge cannot reach NATS; retry", {},
                        frame.id)
            return
        finally:
            self.forgetting -= 1
        self._send(ForgottenFrame(session_id=frame.session_id, existed=deleted.existed,
                                  turns=deleted.turns, id=frame.id))

    def finish(self, ask: Ask, frame: ServerFrame | None, outcome: str) -> None:
        """End an ask once: its last frame, its limits back, its route gone."""
        if ask.finished:
            return
        ask.finished = True
        if frame is not None:
            self.outbox.put(encode_frame(frame), ask.stream)
        if self.asks.get(ask.id) is ask:
            del self.asks[ask.id]
        b = self.bridge
        b.forget(ask.request_id)
        b.release(ask.identity, ask.request_id, time.perf_counter() - ask.started)
        b.count_ask(outcome)

    # -- events from the bus ------------------------------------------------------------------
    def relay(self, ask: Ask, event: QueryEvent) -> None:
        """Queue the event's frame, never wait."""
        if ask.finished:
            return
        if isinstance(event, Token):
            if ask.cancel_requested:
                return  # the client pressed stop: the answer stops now
            if ask.first_token_at is None:
                ask.first_token_at = time.perf_counter()
                self.bridge.observe_first_token(ask.first_token_at - ask.started)
            ask.tokens += 1
            ask.chars += len(event.text)
            before = self.outbox.coalesced
            self.outbox.put_token(ask.stream, event.text)
            if self.outbox.coalesced != before:
                self.bridge.count_coalesced()
        elif isinstance(event, Sources):
            self.outbox.put(encode_frame(SourcesFrame(id=ask.id, sources=event.sources,
                                                      missing_shards=event.missing_shards)),
                            ask.stream)
        elif isinstance(event, Done):
            self.answered[ask.request_id] = ask.session_id
            while len(self.answered) > _RATED:
                self.answered.popitem(last=False)
            now = time.perf_counter()
            ttft = None if ask.first_token_at is None else _ms(ask.first_token_at - ask.started)
            self.finish(ask, DoneFrame(
                id=ask.id, request_id=ask.request_id, text_length=event.text_length,
                provider=event.provider, model=event.model, usage=event.usage,
                timings_ms=event.timings_ms, cache_hit=event.cache_hit,
                prompt_version=event.prompt_version, stopped=event.stopped, ttft_ms=ttft,
                total_ms=_ms(now - ask.started)), "done")
        elif isinstance(event, Failed):
            self.finish(ask, FailedFrame(
                id=ask.id, request_id=ask.request_id, code=event.code, message=event.message,
                trace_id=event.trace_id, partial_text_length=ask.chars), "failed")
        elif isinstance(event, Cancelled):
            self.finish(ask, CancelledFrame(
                id=ask.id, request_id=ask.request_id, partial_text_length=ask.chars,
                tokens_used=event.tokens_used), "cancelled")
        # a `context` event (the trimmed passages) is for other consumers: not relayed

    # -- writing ---------------------------------------------------------------------------------
    def _send(self, frame: ServerFrame) -> None:
        self.outbox.put(encode_frame(frame))

    def _error(self, code: ErrorCode, message: str, details: dict[str, object],
               ask_id: str | None) -> None:
        self._send(ErrorFrame(code=code, message=message, details=details, id=ask_id))

    async def _write(self) -> None:
        try:
            while True:
                data = await self.outbox.get()
                # a send waits only while the send buffer is full; the bridge's watchdog
                # ends sockets stuck here (a cancel scope per frame would triple its cost)
                self.sending_since = anyio.current_time()
                await self.ws.send(data, text=True)
                self.sending_since = None
        except ConnectionClosed:
            if self._scope is not None:
                self._scope.cancel()

    def check_stuck(self, now: float) -> None:
        """Called by the bridge's watchdog: close the socket if its send buffer has
        stayed full for longer than ``slow_reader_timeout_s``."""
        timeout = self.config.slow_reader_timeout_s
        if self.sending_since is not None and now - self.sending_since > timeout:
            self._abort(CloseCode.SLOW_READER,
                        f"slow reader: the send buffer stayed full for {timeout:g}s "
                        "(bridge.slow_reader_timeout_s)", "slow_reader")

    def tune_socket(self) -> None:
        """Bound the kernel's send buffer too, when configured, so a stuck reader is seen
        after ``send_buffer_bytes`` plus this, not after megabytes of autotuned buffer."""
        size = self.config.socket_send_buffer_bytes
        if size is None:
            return
        sock = self.ws.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
