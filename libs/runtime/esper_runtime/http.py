"""What every service's HTTP layer shares: a trace per request, one error body, and a trace id on every 500.

:class:`RequestContext` is the outermost layer of every service's app. It puts each request in a trace —
the caller's, from a W3C ``traceparent`` header (or an ``X-Trace-Id``), else a new one — as a SERVER span
when tracing is on, answers with the trace id in ``X-Trace-Id``, and turns an unhandled exception into a
``500`` whose body quotes the trace id that is also in the log line.

Error bodies are ``{"error", "detail", "status", "trace_id"}`` (:func:`error_response`); HTTP errors raised
by routes and dependencies (401 and 403 included) get that shape.
"""

from __future__ import annotations

import logging
import os
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from esper_oona.tracing import remote_parent, tracing_active, w3c_trace_id

log = logging.getLogger("esper_runtime.http")

TRACE_HEADER = "X-Trace-Id"
_tracer = trace.get_tracer("esper_runtime.http")
_propagator = TraceContextTextMapPropagator()


def trace_id_of(request: Request) -> str:
    """The request's trace id (set by :class:`RequestContext`)."""
    return str(getattr(request.state, "trace_id", "")) or os.urandom(16).hex()


def error_response(status: int, detail: str, trace_id: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error body shape of every service's API."""
    error = HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    return JSONResponse({"error": error, "detail": detail, "status": status, "trace_id": trace_id},
                        status_code=status, headers=headers)


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers) if exc.headers else None
    return error_response(exc.status_code, str(exc.detail), trace_id_of(request), headers)


def install_http_layers(app: FastAPI) -> None:
    """Give ``app`` the request context (outermost) and the error body for HTTP errors."""
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_middleware(RequestContext)


def add_inner_middleware(app: FastAPI, middleware: type, **options: Any) -> None:
    """Add ``middleware`` inside the request context (so its own responses carry the trace id)."""
    app.user_middleware.append(Middleware(middleware, **options))  # type: ignore[arg-type]


def _incoming(scope: Scope) -> tuple[otel_context.Context | None, str | None]:
    """The caller's trace context and trace id: W3C ``traceparent`` first, then ``X-Trace-Id``."""
    headers = {k: v for k, v in scope.get("headers") or [] if k in (b"traceparent", b"tracestate", b"x-trace-id")}
    if b"traceparent" in headers:
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers.items()}
        extracted = _propagator.extract(carrier)
        span_context = trace.get_current_span(extracted).get_span_context()
        if span_context.is_valid:
            return extracted, format(span_context.trace_id, "032x")
    given = headers.get(b"x-trace-id", b"").decode("latin-1")
    if given and len(given) <= 128 and given.isprintable():
        number = w3c_trace_id(given)
        return (remote_parent(number) if number is not None else None), given
    return None, None


class RequestContext:
    """Outermost ASGI layer: a trace per request, ``X-Trace-Id`` on every answer, a 500 body for any crash."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        parent, trace_id = _incoming(scope)
        if not tracing_active():
            if parent is None and trace_id is None:
                trace_id = os.urandom(16).hex()
                parent = remote_parent(int(trace_id, 16))
            token = otel_context.attach(parent) if parent is not None else None
            try:
                await self._serve(scope, receive, send, str(trace_id), None)
            finally:
                if token is not None:
                    otel_context.detach(token)
            return
        method = scope.get("method", "")
        attributes = {"http.request.method": method, "url.path": scope.get("path", "")}
        with _tracer.start_as_current_span(method, context=parent, kind=SpanKind.SERVER, attributes=attributes,
                                           record_exception=False, set_status_on_exception=False) as span:
            if trace_id is None:
                trace_id = format(span.get_span_context().trace_id, "032x")
            elif w3c_trace_id(trace_id) is None:
                span.set_attribute("esper.trace_id", trace_id)
            await self._serve(scope, receive, send, trace_id, span)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, trace_id: str,
                     span: trace.Span | None) -> None:
        scope.setdefault("state", {})["trace_id"] = trace_id
        started = False

        async def send_with_trace(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                MutableHeaders(scope=message)[TRACE_HEADER] = trace_id
                if span is not None:
                    status = int(message["status"])
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
            await send(message)

        try:
            await self.app(scope, receive, send_with_trace)
        except Exception as exc:
            log.exception("unhandled error", extra={"trace_id": trace_id, "path": scope.get("path")})
            if span is not None:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            if started:  # the response is half sent; nothing sensible can follow
                raise
            response = error_response(500, f"internal error; quote trace id {trace_id} when reporting it", trace_id)
            await response(scope, receive, send_with_trace)
        finally:
            route = scope.get("route")
            if span is not None and route is not None and getattr(route, "path", None):
                span.update_name(f"{scope.get('method', '')} {route.path}")
                span.set_attribute("http.route", route.path)
