"""Every error leaves the API as ``{"error", "detail", "status", "trace_id"}`` with the right HTTP status.

Contract validation failures (FastAPI's 422) become 400 with the reasons spelled out; domain errors map
to 400/404/409. The body shape, HTTP errors and the 500 with its trace id (also in the log line) come
from the runtime (``esper_runtime.http``), as in every service.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from esper_runtime.http import error_response, trace_id_of
from esper_storage import DatabaseUnavailable

from ..errors import BadRequest, BlueprintRejected, Conflict, IllegalTransition, NotFound

log = logging.getLogger("esper_urza.api")


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

    def mapped(status: int) -> Any:
        async def handler(request: Request, exc: Exception) -> JSONResponse:
            if status >= 409:
                log.warning("request refused: %s", exc,
                            extra={"trace_id": trace_id_of(request), "path": request.url.path})
            return error_response(status, str(exc), trace_id_of(request))
        return handler

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(BlueprintRejected, mapped(400))
    app.add_exception_handler(BadRequest, mapped(400))
    app.add_exception_handler(NotFound, mapped(404))
    app.add_exception_handler(Conflict, mapped(409))
    app.add_exception_handler(IllegalTransition, mapped(409))
    # The database down or stalled: say so (and that a retry may work), rather than "internal error".
    app.add_exception_handler(DatabaseUnavailable, mapped(503))
