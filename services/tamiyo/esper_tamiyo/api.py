"""Tamiyo's REST API (OpenAPI at ``/docs``): run status, seeds, budgets, decisions, and the policy dial.

Viewers read; changing the policy needs the operator role (``esper_runtime.auth``).

Bad input is answered ``400`` with the reason and changes nothing: a malformed or out-of-range
PolicyUpdate, an unknown stage filter, a page outside 1..n. A policy update older than the one in
force is a ``409``.
"""

from __future__ import annotations

import threading
from typing import Any

from fastapi import APIRouter, Body, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from esper_contracts import PolicyUpdate, SeedStage
from esper_runtime import Role, require

from .controller import PolicyUpdateError, StalePolicyError, TamiyoController

MAX_PAGE_SIZE = 500


def readable(errors: list[Any]) -> str:
    """Pydantic errors as one line: ``field.path: message; ...``."""
    parts = []
    for e in errors:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)


async def bad_request(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's validation failures as 400 with a readable reason (instead of 422)."""
    errors = exc.errors() if isinstance(exc, RequestValidationError | ValidationError) else []
    return JSONResponse(status_code=400, content={"detail": readable(list(errors)) or str(exc)})


def build_router(controller: TamiyoController, lock: threading.RLock) -> APIRouter:
    """The /api/v1 routes over ``controller`` (every call holds ``lock``, like the bus handlers)."""
    router = APIRouter(prefix="/api/v1", tags=["tamiyo"], dependencies=[require(Role.VIEWER)])

    @router.get("/system/status")
    def system_status() -> dict[str, Any]:
        """Live status of the run: epoch, validation accuracy, active adaptations and their seed ids."""
        with lock:
            return controller.status()

    @router.get("/seeds")
    def list_seeds(
        stage: str | None = Query(default=None, description="Only seeds in this stage (e.g. TRAINING)"),
        region: str | None = Query(default=None, description="Only seeds of matching regions (glob on layer id)"),
        page: int = Query(default=1, description="1-based page number"),
        page_size: int = Query(default=50, description=f"Seeds per page, 1..{MAX_PAGE_SIZE}"),
    ) -> dict[str, Any]:
        """The latest seeds, paged and filtered."""
        if page < 1:
            raise HTTPException(400, f"page must be >= 1, got {page}")
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise HTTPException(400, f"page_size must be within 1..{MAX_PAGE_SIZE}, got {page_size}")
        wanted = None
        if stage is not None:
            try:
                wanted = SeedStage(stage.upper())
            except ValueError:
                raise HTTPException(400, f"unknown stage {stage!r}; stages: "
                                         f"{', '.join(s.value for s in SeedStage)}") from None
        with lock:
            return controller.seeds(wanted, region, page, page_size)

    @router.get("/budgets")
    def budgets() -> dict[str, Any]:
        """The current cycle's pool, domain and region allocations, protected zones, queued proposals."""
        with lock:
            return controller.budgets()

    @router.get("/decisions")
    def decisions(
        limit: int = Query(default=50, description="How many, newest first (1..500)"),
        kind: str | None = Query(default=None, description="adaptation, allocation, proposal, scaffold or policy"),
    ) -> list[dict[str, Any]]:
        """Recent decisions, each with the inputs that drove it."""
        if not 1 <= limit <= 500:
            raise HTTPException(400, f"limit must be within 1..500, got {limit}")
        kinds = ("adaptation", "allocation", "proposal", "scaffold", "policy")
        if kind is not None and kind not in kinds:
            raise HTTPException(400, f"unknown kind {kind!r}; kinds: {', '.join(kinds)}")
        with lock:
            return controller.recent_decisions(limit, kind)

    @router.get("/policy")
    def get_policy() -> dict[str, Any]:
        """The policy update in force."""
        with lock:
            return controller.policy_view()

    @router.post("/policy", dependencies=[require(Role.OPERATOR)],
                 responses={400: {"description": "Invalid or out-of-range update, with the reason"},
                            409: {"description": "Older than the policy in force"}})
    def post_policy(body: dict[str, Any] = Body(..., description="A PolicyUpdate")) -> dict[str, Any]:
        """Change the risk posture, thresholds, budget scale or protected regions; returns the policy in force."""
        try:
            update = PolicyUpdate.model_validate(body)
        except ValidationError as exc:
            raise HTTPException(400, readable(list(exc.errors()))) from None
        with lock:
            try:
                return controller.apply_policy_update(update)
            except PolicyUpdateError as exc:
                raise HTTPException(400, str(exc)) from None
            except StalePolicyError as exc:
                raise HTTPException(409, str(exc)) from None

    return router
