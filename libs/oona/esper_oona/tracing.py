"""Spans across the bus: the envelope's trace id is the OpenTelemetry trace id, carried as W3C trace context.

Every envelope has a ``trace_id`` (32 hex digits, the shape of a W3C trace id). Publishing inside a span
stamps that span's trace id on the envelope; publishing with ``parent=`` keeps the parent's. The message
also carries a ``traceparent`` property naming the publish span, so the consumer's span is its child and
one trace runs across services: the trainer's packet, Tamiyo's decision, its command, the trainer's
transition, the field report, Urza's and Karn's handling of it.

Only the OpenTelemetry API is used here; a process records spans once it installs an SDK tracer provider
(``esper_runtime.tracing.configure_tracing``). Without one — the default — no span is created: the
consumer only makes the envelope's trace id the current trace context while the handler runs (so HTTP
calls and messages the handler makes carry it), and publishing reads that context.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    NonRecordingSpan,
    NoOpTracerProvider,
    ProxyTracerProvider,
    Span,
    SpanContext,
    SpanKind,
    TraceFlags,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from esper_contracts import Envelope

#: The message property holding the W3C ``traceparent`` of the publish span.
TRACEPARENT = "traceparent"

_tracer = trace.get_tracer("esper_oona")
_propagator = TraceContextTextMapPropagator()
_HEX = frozenset("0123456789abcdef")


def tracing_active() -> bool:
    """True once the process installed a tracer provider that records spans (an SDK provider)."""
    return not isinstance(trace.get_tracer_provider(), ProxyTracerProvider | NoOpTracerProvider)


def w3c_trace_id(trace_id: str) -> int | None:
    """``trace_id`` as a W3C trace id (a non-zero 128-bit number), or None when it is not 32 lowercase hex."""
    if len(trace_id) != 32 or not _HEX.issuperset(trace_id):
        return None
    value = int(trace_id, 16)
    return value or None


def current_trace_id() -> str | None:
    """The trace id of the current span context as 32 hex digits, or None outside any trace."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def _span_id_from(text: str) -> int:
    """A span id for a remote parent known only by a message id: its first 16 hex digits, else random."""
    if len(text) >= 16 and _HEX.issuperset(text[:16]) and int(text[:16], 16):
        return int(text[:16], 16)
    return int.from_bytes(os.urandom(8), "big") or 1


def remote_parent(trace_id: int, span_hint: str = "") -> otel_context.Context:
    """A context whose span is a remote parent in trace ``trace_id`` (sampled): new spans join that trace."""
    parent = SpanContext(trace_id=trace_id, span_id=_span_id_from(span_hint), is_remote=True,
                         trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return trace.set_span_in_context(NonRecordingSpan(parent))


def _traceparent(span: Span) -> dict[str, str]:
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=trace.set_span_in_context(span))
    return carrier


@contextmanager
def publish_span(topic: str, trace_id: str | None, count: int = 1) -> Iterator[tuple[str | None, dict[str, str]]]:
    """Around one publish on ``topic``: yields the trace id to stamp and the properties to send.

    Without tracing it yields ``trace_id`` (or the current trace's id) and no properties. With tracing a
    PRODUCER span is open while the message is encoded and enqueued; it is the child of the current span
    when that span belongs to the same trace, else of a remote parent in the envelope's trace.
    """
    if trace_id is None:
        trace_id = current_trace_id()
    if not tracing_active():
        yield trace_id, {}
        return
    parent: otel_context.Context | None = None
    foreign = False
    if trace_id is not None:
        wanted = w3c_trace_id(trace_id)
        if wanted is None:
            foreign = True  # an id that is no W3C trace id (set by hand): a fresh trace that names it
        elif trace.get_current_span().get_span_context().trace_id != wanted:
            parent = remote_parent(wanted)
    attributes: dict[str, Any] = {"messaging.system": "oona", "messaging.operation.type": "send",
                                  "messaging.destination.name": topic}
    if count != 1:
        attributes["messaging.batch.message_count"] = count
    if foreign:
        attributes["esper.trace_id"] = trace_id
    with _tracer.start_as_current_span(f"send {topic}", context=parent, kind=SpanKind.PRODUCER,
                                       attributes=attributes) as span:
        stamped = trace_id if foreign else format(span.get_span_context().trace_id, "032x")
        yield stamped, _traceparent(span)


def _consumer_parent(envelope: Envelope[Any], properties: Mapping[str, str] | None) -> otel_context.Context | None:
    wanted = w3c_trace_id(envelope.trace_id)
    if wanted is None:
        return None
    if properties and TRACEPARENT in properties:
        extracted = _propagator.extract({TRACEPARENT: properties[TRACEPARENT]})
        if trace.get_current_span(extracted).get_span_context().trace_id == wanted:
            return extracted
    return remote_parent(wanted, envelope.message_id)  # published without trace context: join its trace


@contextmanager
def consume_span(envelope: Envelope[Any], properties: Mapping[str, str] | None, subscription: str) -> Iterator[None]:
    """Around one handler call: the envelope's trace is the current one, in a CONSUMER span when tracing."""
    parent = _consumer_parent(envelope, properties)
    if not tracing_active():
        if parent is None:
            yield
            return
        token = otel_context.attach(parent)
        try:
            yield
        finally:
            otel_context.detach(token)
        return
    attributes = {"messaging.system": "oona", "messaging.operation.type": "process",
                  "messaging.destination.name": envelope.topic, "messaging.consumer.group.name": subscription,
                  "messaging.message.id": envelope.message_id,
                  "messaging.message.conversation_id": envelope.correlation_id, "esper.producer": envelope.producer}
    if parent is None:
        attributes["esper.trace_id"] = envelope.trace_id
    with _tracer.start_as_current_span(f"process {envelope.topic}", context=parent, kind=SpanKind.CONSUMER,
                                       attributes=attributes):
        yield
