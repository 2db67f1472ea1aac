"""Every error leaves the API as ``{"error", "detail", "status", "trace_id"}`` with the right HTTP status.

Contract validation failures (FastAPI's 422) become 400 with the reasons spelled out; domain errors map
to 400/404/409; anything unexpected becomes a 500 whose trace id is also in the log line.
"""

from __future__ import annotations

import logging
import uuid
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from esper_storage import DatabaseUnavailable

from ..errors import BadRequest, BlueprintRejected, Conflict, IllegalTransition, NotFound

log = logging.getLogger("esper_urza.api")

TRACE_HEADER = "X-Trace-Id"


def trace_id_of(request: Request) -> str:
    """The request's trace id (assigned by :class:`ErrorBoundary`)."""
    return str(getattr(request.state, "trace_id", "")) or uuid.uuid4().hex


def error_response(status: int, detail: str, trace_id: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error body shape of the API."""
    error = HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    return JSONResponse({"error": error, "detail": detail, "status": status, "trace_id": trace_id},
                        status_code=status, headers=headers)


def _location(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


def describe_validation_errors(errors: list[dict[str, Any]]) -> str:
    """Pydantic errors as one readable line: ``nodes.0.op: Input should be 'linear', ...; ...``."""
    lines = []
    for e in errors[:20]:
        msg = str(e.get("msg", "invalid"))
        lines.append(f"{_location(tuple(e.get('loc', ())))}: {msg}")
    more = f" (and {len(errors) - 20} more)" if len(errors) > 20 else ""
    return "; ".join(lines) + more


def install_error_handlers(app: FastAPI) -> None:
    """Map validation, HTTP and domain errors to the API's error body."""

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(400, describe_validation_errors(list(exc.errors())), trace_id_of(request))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, str(exc.detail), trace_id_of(request), headers)

    def mapped(status: int) -> Any:
        async def handler(request: Request, exc: Exception) -> JSONResponse:
            if status >= 409:
                log.warning("request refused: %s", exc,
                            extra={"trace_id": trace_id_of(request), "path": request.url.path})
            return error_response(status, str(exc), trace_id_of(request))
        return handler

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(BlueprintRejected, mapped(400))
    app.add_exception_handler(BadRequest, mapped(400))
    app.add_exception_handler(NotFound, mapped(404))
    app.add_exception_handler(Conflict, mapped(409))
    app.add_exception_handler(IllegalTransition, mapped(409))
    # The database down or stalled: say so (and that a retry may work), rather than "internal error".
    app.add_exception_handler(DatabaseUnavailable, mapped(503))


class ErrorBoundary:
    """Outermost ASGI layer: gives every request a trace id and turns an unhandled exception into a 500 body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(TRACE_HEADER.lower().encode(), b"").decode("latin-1")
        trace_id = incoming if incoming and len(incoming) <= 128 and incoming.isprintable() else uuid.uuid4().hex
        scope.setdefault("state", {})["trace_id"] = trace_id
        started = False

        async def send_with_trace(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                MutableHeaders(scope=message)[TRACE_HEADER] = trace_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_trace)
        except Exception:
            log.exception("unhandled error", extra={"trace_id": trace_id, "path": scope.get("path")})
            if started:  # the response is half sent; nothing sensible can follow
                raise
            response = error_response(500, f"internal error; quote trace id {trace_id} when reporting it", trace_id)
            await response(scope, receive, send_with_trace)
