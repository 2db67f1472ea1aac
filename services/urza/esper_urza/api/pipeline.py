"""``/api/v1/pipeline``: how much work waits in compilation and validation, for producers that pace themselves."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from esper_contracts import PipelineBacklog
from esper_runtime import Role, require

from ..catalog import Catalog
from . import deps
from .blueprints import ERRORS

router = APIRouter(prefix="/api/v1/pipeline", tags=["pipeline"], responses=ERRORS)


@router.get("/backlog", response_model=PipelineBacklog, dependencies=[require(Role.VIEWER)])
def get_backlog(catalog: Annotated[Catalog, Depends(deps.catalog)]) -> PipelineBacklog:
    """Compilation jobs not yet finished, artifacts compiled but not yet judged, and jobs not yet sent.

    Karn reads it before submitting children, so a generative producer never floods Tezzeret and Urabrask.
    """
    return catalog.backlog()
