"""OpenTelemetry traces across the hops, off unless asked for.

Every message already carries a ``Trace`` (``trace_id``, ``parent_id``) so its log
lines, audit events and apology share one id. With tracing on, each actor opens a span
per handled message, parented by that context (W3C: 32-hex trace id, 16-hex span
id), and hands the next hop its own span id as ``parent_id``: one query is one trace
across bridge, retriever, embedder, trimmer, router and the provider call, under the
same trace id as the logs.

On with the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) and
the optional extra ``ragbus[otel]`` (``opentelemetry-sdk`` and the OTLP/HTTP
exporter); :func:`configure` does it once per process. Off, every call here is a
no-op that costs a function call.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import structlog

from ragbus.subjects import Trace

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = ("Span", "configure", "enabled", "span")

_tracer: Any = None  # an opentelemetry Tracer once configured
#: the trace id a root span must take (ours, minted before tracing saw the request)
_wanted_trace_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "ragbus_trace_id", default=None)


def enabled() -> bool:
    return _tracer is not None


def configure(exporter: SpanExporter | None = None, *,
              service: str = "ragbus") -> TracerProvider | None:
    """Turn tracing on for this process: spans to ``exporter``, else to OTLP/HTTP when the
    standard environment names an endpoint. Returns the provider (None: tracing off)."""
    global _tracer
    if exporter is None and not (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                                 or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError:
        structlog.get_logger().warning(
            "tracing.unavailable", advice="pip install 'ragbus[otel]' to export traces")
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": service}),
                              id_generator=_ids())
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    _tracer = provider.get_tracer("ragbus")
    return provider


def disable() -> None:
    """Tracing off again (tests)."""
    global _tracer
    _tracer = None


def _ids() -> Any:
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class _RagbusIds(RandomIdGenerator):
        """A root span takes the trace id the request already has in logs and events."""

        def generate_trace_id(self) -> int:
            wanted = _wanted_trace_id.get()
            if wanted:
                try:
                    return int(wanted, 16)
                except ValueError:
                    pass
            return int(super().generate_trace_id())

    return _RagbusIds()


class Span:
    """A handled message's span: what to hand the next hop (``trace``), and what to mark
    on it. Without tracing, ``trace`` is the incoming one and the rest does nothing."""

    __slots__ = ("_span", "trace")

    def __init__(self, otel_span: Any, trace: Trace) -> None:
        self._span = otel_span
        self.trace = trace

    def set(self, **attributes: Any) -> None:
        """Attributes that matter when reading the trace (shard, hits, tokens, provider,
        cache hit, breaker state); ``None`` values are left out."""
        if self._span is not None:
            self._span.set_attributes({f"ragbus.{k}": v for k, v in attributes.items()
                                       if v is not None})

    def failed(self, code: str, message: str = "") -> None:
        if self._span is not None:
            from opentelemetry.trace import Status, StatusCode

            self._span.set_attribute("ragbus.code", code)
            self._span.set_status(Status(StatusCode.ERROR, f"{code}: {message}"[:200]))

    def cancelled(self, reason: str = "") -> None:
        if self._span is not None:
            self._span.set_attribute("ragbus.code", "CANCELLED")
            self._span.add_event("cancelled", {"reason": reason})


@contextmanager
def span(name: str, trace: Trace, **attributes: Any) -> Iterator[Span]:
    """A span named ``name`` in ``trace``, child of ``trace.parent_id`` (a root span with
    ``trace.trace_id`` when there is none)."""
    if _tracer is None:
        yield Span(None, trace)
        return
    from opentelemetry import trace as otel
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    parent = None
    if trace.parent_id:
        try:
            remote = SpanContext(trace_id=int(trace.trace_id, 16),
                                 span_id=int(trace.parent_id, 16), is_remote=True,
                                 trace_flags=TraceFlags(TraceFlags.SAMPLED))
            parent = otel.set_span_in_context(NonRecordingSpan(remote))
        except ValueError:
            parent = None
    token = _wanted_trace_id.set(trace.trace_id)
    try:
        with _tracer.start_as_current_span(name, context=parent, end_on_exit=True,
                                           record_exception=False,
                                           set_status_on_exception=False) as current:
            ctx = current.get_span_context()
            handle = Span(current, Trace(trace_id=f"{ctx.trace_id:032x}",
                                         parent_id=f"{ctx.span_id:016x}"))
            handle.set(**attributes)
            yield handle
    finally:
        _wanted_trace_id.reset(token)
