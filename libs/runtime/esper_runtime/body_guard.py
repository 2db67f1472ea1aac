"""Every service's guard on request bodies: a size limit and a read timeout.

Without a limit one request can fill the memory; without a timeout a client that declares more bytes
than it sends (a body shorter than its Content-Length) holds a worker for as long as its connection
stays open. Both refusals use the error body every Esper API answers with.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from http import HTTPStatus

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The body limit of one request, given its scope (a service may allow larger uploads on some paths).
LimitFor = Callable[[Scope], int]


def _error(status: int, detail: str, scope: Scope) -> JSONResponse:
    trace_id = str(scope.get("state", {}).get("trace_id") or uuid.uuid4().hex)
    error = HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    return JSONResponse({"error": error, "detail": detail, "status": status, "trace_id": trace_id},
                        status_code=status)


class BodyGuard:
    """Refuses a body over its limit with 413 (before or while it is read), one not arriving in time with 408.

    The timeout applies to each wait for the next piece of the body, and only until the body is complete,
    so a slow but steady upload goes through and a streamed response is never cut short.
    """

    def __init__(self, app: ASGIApp, limit_for: LimitFor, read_timeout_s: float) -> None:
        self.app = app
        self.limit_for = limit_for
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            detail = f"request body of {int(declared)} bytes exceeds the limit of {limit} bytes"
            await _error(413, detail, scope)(scope, receive, send)
            return
        seen = 0
        complete = False

        async def guarded() -> Message:
            nonlocal seen, complete
            if complete:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout=self.read_timeout_s)
            except TimeoutError:
                raise HTTPException(408, f"the request body stopped arriving: {seen} byte(s) in "
                                         f"{self.read_timeout_s:g} s"
                                         + (f" of the {int(declared)} declared" if declared else "")) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, f"request body exceeds the limit of {limit} bytes")
                complete = not message.get("more_body", False)
            else:
                complete = True
            return message

        await self.app(scope, guarded, send)
