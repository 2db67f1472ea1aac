"""Queries on field reports (outcomes of adaptations in real models)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, func, select

from esper_contracts import FieldReport
from esper_storage import insert_ignore

from .models import field_reports


def insert_report(conn: Connection, report: FieldReport, now: datetime) -> bool:
    """Store a report once; False when a report with the same id is already stored (a redelivery)."""
    return insert_ignore(conn, field_reports, {
        "report_id": report.report_id,
        "blueprint_id": report.blueprint_id,
        "kernel_artifact_id": report.kernel_artifact_id,
        "seed_id": report.seed_id,
        "outcome": report.outcome.value,
        "report_json": report.model_dump_json(),
        "received_at": now,
    }, ["report_id"]) == 1


def reports_of(conn: Connection, blueprint_id: str, *, limit: int, offset: int) -> tuple[list[FieldReport], int]:
    """One page of a blueprint's field reports, oldest first, and the total."""
    where = field_reports.c.blueprint_id == blueprint_id
    total = conn.execute(select(func.count()).select_from(field_reports).where(where)).scalar_one()
    rows = conn.execute(select(field_reports.c.report_json).where(where)
                        .order_by(field_reports.c.received_at, field_reports.c.report_id)
                        .limit(limit).offset(offset)).scalars()
    return [FieldReport.model_validate_json(r) for r in rows], int(total)
