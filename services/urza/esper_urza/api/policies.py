"""``/api/v1/policies``: learned Tamiyo policy versions (Simic publishes them, Tamiyo fetches them)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Response

from esper_runtime import Role, require

from ..catalog import Catalog
from ..policies import PolicyLibrary
from . import deps
from .blueprints import ERRORS

router = APIRouter(prefix="/api/v1/policies", tags=["policies"], responses=ERRORS)
CatalogDep = Annotated[Catalog, Depends(deps.catalog)]


@router.put("/{version}", dependencies=[require(Role.OPERATOR)], status_code=201)
def put_policy(version: str, catalog: CatalogDep, response: Response,
               artifact: Annotated[dict[str, Any], Body(description="The policy artifact (esper-policy/1 JSON)")]
               ) -> dict[str, Any]:
    """Store a policy version: 201 when new, 200 when this exact document is already stored, 409 if another is."""
    stored, new = PolicyLibrary(catalog.ctx).put(version, artifact)
    response.status_code = 201 if new else 200
    response.headers["X-Content-SHA256"] = stored.sha256
    return {"version": stored.version, "sha256": stored.sha256, "size_bytes": stored.size_bytes,
            "created_at": stored.created_at.isoformat(), "created": new}


@router.get("/{version}", dependencies=[require(Role.VIEWER)])
def get_policy(version: str, catalog: CatalogDep, response: Response) -> dict[str, Any]:
    """The policy artifact as stored; ``X-Content-SHA256`` carries the digest of its canonical JSON."""
    stored = PolicyLibrary(catalog.ctx).get(version)
    response.headers["X-Content-SHA256"] = stored.sha256
    return stored.artifact


@router.get("", dependencies=[require(Role.VIEWER)])
def list_policies(catalog: CatalogDep) -> list[dict[str, Any]]:
    """Every stored version and its digest, oldest first."""
    stored = PolicyLibrary(catalog.ctx).versions()
    return [{"version": v, "sha256": d, "created_at": c.isoformat()} for v, d, c in stored]
