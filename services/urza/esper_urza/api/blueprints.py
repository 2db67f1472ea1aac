"""``/api/v1/blueprints``: submit and read blueprints, their lineage, jobs and field reports."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Response

from esper_contracts import BlueprintClass, BlueprintIR, BlueprintLineage, BlueprintRecord, FieldReport
from esper_contracts.base import MAX_INT32, Text
from esper_runtime import Role, require

from ..catalog import Catalog
from ..errors import NotFound
from ..settings import UrzaSettings
from . import deps
from .schemas import (
    BlueprintCheck,
    BlueprintPage,
    CompilationJobView,
    ErrorBody,
    FieldReportPage,
    FieldReportReceipt,
)

ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 500)
}
router = APIRouter(prefix="/api/v1/blueprints", tags=["blueprints"], responses=ERRORS)
CatalogDep = Annotated[Catalog, Depends(deps.catalog)]
SettingsDep = Annotated[UrzaSettings, Depends(deps.settings)]
read = [require(Role.VIEWER)]
write = [require(Role.OPERATOR)]


@router.post("", response_model=BlueprintRecord, status_code=201, dependencies=write,
             responses={200: {"model": BlueprintRecord, "description": "already stored: the existing record"}})
def submit_blueprint(ir: BlueprintIR, response: Response, catalog: CatalogDep) -> BlueprintRecord:
    """Validate and store a BlueprintIR and queue its compilation jobs.

    201 with the new record; 200 with the existing record when the same IR (by hash) is already
    stored, in which case nothing is queued again. 400 names what is wrong with an invalid IR, and
    nothing is stored.
    """
    record, created = catalog.submit(ir)
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/api/v1/blueprints/{record.blueprint_id}"
    return record


@router.post("/check", response_model=BlueprintCheck, dependencies=read)
def check_blueprint(ir: BlueprintIR, catalog: CatalogDep) -> BlueprintCheck:
    """Validate a BlueprintIR without storing it: its id and parameter count, or 400 with the reason."""
    report = catalog.check(ir)
    blueprint_id = ir.ir_hash()
    try:
        catalog.get(blueprint_id)
        stored = True
    except NotFound:
        stored = False
    return BlueprintCheck(blueprint_id=blueprint_id, parameter_count=report.parameter_count, stored=stored)


@router.get("", response_model=BlueprintPage, dependencies=read)
def list_blueprints(
    catalog: CatalogDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=MAX_INT32, description="page size (at most max_page_size)")] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_INT32)] = 0,
    blueprint_class: BlueprintClass | None = None,
    name: Text | None = None,
    layout: Literal["BD", "BTD", "BCHW"] | None = None,
    features: Annotated[int | None, Query(ge=1, le=MAX_INT32)] = None,
) -> BlueprintPage:
    """Blueprints, oldest first, with optional filters; ``next_offset`` pages on."""
    limit = min(limit, settings.max_page_size)
    items, total = catalog.page(limit=limit, offset=offset, name=name, layout=layout, features=features,
                                blueprint_class=blueprint_class.value if blueprint_class else None)
    more = offset + len(items) < total
    return BlueprintPage(items=items, total=total, limit=limit, offset=offset,
                         next_offset=offset + len(items) if more else None)


@router.get("/{blueprint_id}", response_model=BlueprintRecord, dependencies=read)
def get_blueprint(blueprint_id: str, catalog: CatalogDep) -> BlueprintRecord:
    """The blueprint's record with every compiled artifact and its status."""
    return catalog.get(blueprint_id)


@router.get("/{blueprint_id}/lineage", response_model=BlueprintLineage, dependencies=read)
def get_lineage(blueprint_id: str, catalog: CatalogDep) -> BlueprintLineage:
    """How the blueprint was made (its mutation record), its parents (from the IR's ``parent_ids``) and its
    children (blueprints naming it as a parent), each relative with its own mutation record."""
    return catalog.lineage(blueprint_id)


@router.get("/{blueprint_id}/jobs", response_model=list[CompilationJobView], dependencies=read)
def get_jobs(blueprint_id: str, catalog: CatalogDep) -> list[CompilationJobView]:
    """The compilation jobs queued for this blueprint and whether each has been published."""
    return [CompilationJobView(job=job, published=sent) for job, sent in catalog.compilation_jobs(blueprint_id)]


@router.get("/{blueprint_id}/field-reports", response_model=FieldReportPage, dependencies=read)
def get_field_reports(
    blueprint_id: str,
    catalog: CatalogDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=MAX_INT32)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_INT32)] = 0,
) -> FieldReportPage:
    """Outcomes of this blueprint's adaptations in real models, oldest first."""
    limit = min(limit, settings.max_page_size)
    items, total = catalog.field_reports(blueprint_id, limit=limit, offset=offset)
    return FieldReportPage(items=items, total=total, limit=limit, offset=offset)


@router.post("/{blueprint_id}/field-reports", response_model=FieldReportReceipt, status_code=201,
             dependencies=write)
def post_field_report(blueprint_id: str, report: FieldReport, response: Response,
                      catalog: CatalogDep) -> FieldReportReceipt:
    """Store a FieldReport about this blueprint (201; 200 when the same report id was stored before)."""
    created = catalog.add_field_report(report, blueprint_id=blueprint_id)
    response.status_code = 201 if created else 200
    return FieldReportReceipt(report_id=report.report_id, created=created)
