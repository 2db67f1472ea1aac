"""Bearer-token access: open when no token is configured (standalone), else read and write tokens.

A missing or unknown token gets 401; a read token used for a write gets 403.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request

from ..settings import UrzaSettings


def _matches(token: str, allowed: list[str]) -> bool:
    # compare every candidate in constant time, so timing does not reveal which prefix matched
    return any([secrets.compare_digest(token.encode(), a.encode()) for a in allowed])


def _token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def require(access: str) -> Callable[[Request], Coroutine[Any, Any, None]]:
    """A FastAPI dependency demanding ``read`` or ``write`` access.

    ``async`` although it never awaits: it does not block, so it runs on the event loop instead of
    costing every request a trip to the thread pool.
    """

    async def check(request: Request) -> None:
        settings: UrzaSettings = request.app.state.urza_settings
        if not settings.auth_enabled:
            return
        token = _token(request)
        challenge = {"WWW-Authenticate": "Bearer"}
        if token is None:
            raise HTTPException(401, "missing bearer token (Authorization: Bearer <token>)", headers=challenge)
        if _matches(token, settings.write_tokens):
            return
        if _matches(token, settings.read_tokens):
            if access == "write":
                raise HTTPException(403, "this token may read but not write")
            return
        raise HTTPException(401, "unknown bearer token", headers=challenge)

    return check
