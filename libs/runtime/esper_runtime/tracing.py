"""Tracing set-up for a process: an OpenTelemetry SDK tracer provider exporting over OTLP, off by default.

Spans are made where work crosses a boundary: every HTTP request a service serves
(:class:`esper_runtime.http.RequestContext`), every message published and handled on the bus
(``esper_oona.tracing``), Tamiyo's decision and Kasmina's transitions. They cost nothing until a process
calls :func:`configure_tracing` with an endpoint: ``esper serve`` does when ``ESPER_OTLP_ENDPOINT`` is set
(``otlp_endpoint`` in the settings), ``esper train`` when the variable is set in its environment.

Trace context travels as W3C ``traceparent``: in HTTP headers (the Urza client and the Narset link send it)
and in bus message properties, with the envelope's ``trace_id`` as the trace id.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

log = logging.getLogger(__name__)

_lock = threading.Lock()
_configured: TracerProvider | None = None


def configure_tracing(service_name: str, *, otlp_endpoint: str | None = None, sample_ratio: float = 1.0,
                      processor: SpanProcessor | None = None) -> TracerProvider | None:
    """Install the process's tracer provider; returns it, or None when there is nothing to export to.

    ``otlp_endpoint`` (an OTLP/HTTP traces URL) adds a batching OTLP exporter; ``processor`` adds any other
    span processor (tests pass an in-memory exporter's). OpenTelemetry allows one provider per process:
    a second call adds its exporter to the first provider and keeps the first service name.
    """
    global _configured
    if otlp_endpoint is None and processor is None:
        return None
    with _lock:
        provider = _configured
        if provider is None:
            provider = TracerProvider(resource=Resource.create({"service.name": service_name}),
                                      sampler=ParentBased(TraceIdRatioBased(sample_ratio)))
            trace.set_tracer_provider(provider)
            _configured = provider
        if otlp_endpoint is not None:
            provider.add_span_processor(_otlp_processor(otlp_endpoint))
            log.info("tracing: exporting spans over OTLP", extra={"otlp_endpoint": otlp_endpoint})
        if processor is not None:
            provider.add_span_processor(processor)
    return provider


def _otlp_processor(endpoint: str) -> Any:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    return BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint))


def shutdown_tracing() -> None:
    """Export what is buffered and stop the exporters (at process exit; a no-op when tracing is off)."""
    with _lock:
        if _configured is not None:
            _configured.shutdown()
