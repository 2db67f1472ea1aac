"""Reads and writes of Karn's store: reports in (once each), the library and the outcomes out."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Integer, func, select, update

from esper_contracts import ArtifactId, BlueprintIR, FieldReport, Outcome, UrabraskValidationReport
from esper_storage import insert_ignore

from ..features import FeatureVector, parent_kind
from ..rewards import BlueprintOutcome
from .models import blueprints, field_reports, validation_reports


@dataclass(frozen=True)
class LibraryEntry:
    """One blueprint as Karn knows it: identity, kind, lineage and feature vector (the IR is read on demand)."""

    blueprint_id: str
    name: str
    kind: str
    layout: str
    features: int
    generation: int
    parent_id: str | None
    operator: str | None
    vector: FeatureVector
    proposed_by_karn: bool


def insert_field_report(conn: Connection, report: FieldReport, now: datetime) -> bool:
    """Store a field report once; False when its id is already stored (a redelivery)."""
    return insert_ignore(conn, field_reports, {
        "report_id": report.report_id, "blueprint_id": report.blueprint_id,
        "kernel_artifact_id": report.kernel_artifact_id, "seed_id": report.seed_id, "run_id": report.run_id,
        "outcome": report.outcome.value, "pre_metric": report.pre_metric, "post_metric": report.post_metric,
        "report_json": report.model_dump_json(), "received_at": now,
    }, ["report_id"]) == 1


def insert_validation_report(conn: Connection, report: UrabraskValidationReport, now: datetime) -> bool:
    """Store a validation report once per (artifact, measurement time); False for a repeat."""
    return insert_ignore(conn, validation_reports, {
        "artifact_id": report.artifact_id, "measured_at": report.measured_at,
        "blueprint_id": ArtifactId.parse(report.artifact_id).blueprint_id, "hardware": report.hardware,
        "passed": report.passed,
        "latency_ms_p50": report.latency_ms_p50, "memory_mb_peak": report.memory_mb_peak,
        "report_json": report.model_dump_json(), "received_at": now,
    }, ["artifact_id", "measured_at"]) == 1


def insert_blueprint(conn: Connection, ir: BlueprintIR, vector: FeatureVector, *, proposed_by_karn: bool,
                     now: datetime) -> bool:
    """Add a blueprint to Karn's library view; False when it was known (then only Karn's claim is recorded)."""
    blueprint_id = ir.ir_hash()
    new = insert_ignore(conn, blueprints, {
        "blueprint_id": blueprint_id, "name": ir.name, "kind": parent_kind(ir), "layout": ir.input.layout,
        "features": ir.input.features, "generation": ir.generation,
        "parent_id": ir.mutation.parent_id if ir.mutation else None,
        "operator": ir.mutation.operator if ir.mutation else None,
        "ir_json": ir.model_dump_json(), "vector_json": json.dumps(vector), "proposed_by_karn": proposed_by_karn,
        "seen_at": now,
    }, ["blueprint_id"]) == 1
    if not new and proposed_by_karn:
        conn.execute(update(blueprints).where(blueprints.c.blueprint_id == blueprint_id)
                     .values(proposed_by_karn=True))
    return new


def mark_failed(conn: Connection, blueprint_id: str, now: datetime) -> None:
    """Record that no artifact of the blueprint compiled (Urza said so): it is judged, and not validated."""
    conn.execute(update(blueprints).where(blueprints.c.blueprint_id == blueprint_id, blueprints.c.failed_at.is_(None))
                 .values(failed_at=now))


def known_ids(conn: Connection) -> set[str]:
    """Every blueprint id in Karn's library view."""
    return set(conn.execute(select(blueprints.c.blueprint_id)).scalars())


def library(conn: Connection, *, layout: str | None = None, features: int | None = None) -> list[LibraryEntry]:
    """Karn's library view, oldest first, optionally for one interface."""
    stmt = select(blueprints).order_by(blueprints.c.seen_at, blueprints.c.blueprint_id)
    if layout is not None:
        stmt = stmt.where(blueprints.c.layout == layout)
    if features is not None:
        stmt = stmt.where(blueprints.c.features == features)
    return [LibraryEntry(r.blueprint_id, r.name, r.kind, r.layout, r.features, r.generation, r.parent_id, r.operator,
                         tuple(json.loads(r.vector_json)), bool(r.proposed_by_karn)) for r in conn.execute(stmt)]


def blueprint_ir(conn: Connection, blueprint_id: str) -> BlueprintIR | None:
    """The stored IR of a blueprint, or None."""
    text = conn.execute(select(blueprints.c.ir_json).where(blueprints.c.blueprint_id == blueprint_id)).scalar()
    return BlueprintIR.model_validate_json(text) if text is not None else None


def unresolved_children(conn: Connection) -> list[str]:
    """Karn's own children the pipeline has not judged yet: no validation report, no compile failure."""
    judged = select(validation_reports.c.blueprint_id)
    rows = conn.execute(select(blueprints.c.blueprint_id)
                        .where(blueprints.c.proposed_by_karn.is_(True), blueprints.c.failed_at.is_(None),
                               blueprints.c.blueprint_id.not_in(judged))
                        .order_by(blueprints.c.seen_at))
    return list(rows.scalars())


def outcomes(conn: Connection, blueprint_ids: Iterable[str] | None = None) -> dict[str, BlueprintOutcome]:
    """What is known about each blueprint of the library (or of ``blueprint_ids``): verdict, field outcomes, cost.

    Latency and memory are the best passing measurement per hardware, compared with the parent's on the
    same hardware (averaged over the hardware both were measured on).
    """
    ids = list(blueprint_ids) if blueprint_ids is not None else None
    lib = select(blueprints.c.blueprint_id, blueprints.c.parent_id, blueprints.c.failed_at)
    if ids is not None:
        lib = lib.where(blueprints.c.blueprint_id.in_(ids))
    rows = conn.execute(lib).all()
    wanted = {r.blueprint_id for r in rows} | {r.parent_id for r in rows if r.parent_id}
    verdicts: dict[str, bool] = {}
    cost: dict[str, dict[str, tuple[float, float]]] = defaultdict(dict)
    for v in conn.execute(select(validation_reports.c.blueprint_id, validation_reports.c.hardware,
                                 func.max(validation_reports.c.passed.cast(Integer)).label("passed"),
                                 func.min(validation_reports.c.latency_ms_p50).label("latency"),
                                 func.min(validation_reports.c.memory_mb_peak).label("memory"))
                          .where(validation_reports.c.blueprint_id.in_(wanted))
                          .group_by(validation_reports.c.blueprint_id, validation_reports.c.hardware)):
        verdicts[v.blueprint_id] = verdicts.get(v.blueprint_id, False) or bool(v.passed)
        if v.passed:
            cost[v.blueprint_id][v.hardware] = (float(v.latency), float(v.memory))
    reports: dict[str, list[Outcome]] = defaultdict(list)
    for f in conn.execute(select(field_reports.c.blueprint_id, field_reports.c.outcome)
                          .where(field_reports.c.blueprint_id.in_([r.blueprint_id for r in rows]))
                          .order_by(field_reports.c.received_at, field_reports.c.report_id)):
        reports[f.blueprint_id].append(Outcome(f.outcome))
    found = {}
    for r in rows:
        validated = verdicts.get(r.blueprint_id)
        if validated is None and r.failed_at is not None:
            validated = False
        latency, memory = _ratios(cost.get(r.blueprint_id, {}), cost.get(r.parent_id or "", {}))
        found[r.blueprint_id] = BlueprintOutcome(validated, tuple(reports[r.blueprint_id]), latency, memory)
    return found


def _ratios(child: dict[str, tuple[float, float]], parent: dict[str, tuple[float, float]]) -> tuple[
        float | None, float | None]:
    shared = [h for h in child if h in parent and parent[h][0] > 0 and parent[h][1] > 0]
    if not shared:
        return None, None
    latency = sum(child[h][0] / parent[h][0] for h in shared) / len(shared)
    memory = sum(child[h][1] / parent[h][1] for h in shared) / len(shared)
    return latency, memory


def counts(conn: Connection) -> dict[str, int]:
    """How much Karn has seen: library size, its own children, field and validation reports."""
    def count(stmt: Any) -> int:
        return int(conn.execute(stmt).scalar_one())

    return {
        "library": count(select(func.count()).select_from(blueprints)),
        "children": count(select(func.count()).select_from(blueprints).where(blueprints.c.proposed_by_karn.is_(True))),
        "field_reports": count(select(func.count()).select_from(field_reports)),
        "validation_reports": count(select(func.count()).select_from(validation_reports)),
    }
