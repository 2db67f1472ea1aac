"""Queries on blueprints and their lineage."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from esper_contracts import BlueprintIR, BlueprintRecord, CompiledKernelArtifact, MutationRecord
from esper_storage import insert_ignore

from .models import artifacts, blueprint_mutations, blueprint_parents, blueprints
from .rows import artifact_from_row, blueprint_from_row


def insert_blueprint(conn: Connection, blueprint_id: str, ir: BlueprintIR, parameter_count: int,
                     now: datetime) -> bool:
    """Store a new blueprint and its parent links; False (and nothing written) when the id already exists."""
    new = insert_ignore(conn, blueprints, {
        "blueprint_id": blueprint_id,
        "name": ir.name,
        "version": ir.version,
        "blueprint_class": ir.blueprint_class.value,
        "input_layout": ir.input.layout,
        "input_features": ir.input.features,
        "output_layout": ir.output.layout,
        "output_features": ir.output.features,
        "parameter_count": parameter_count,
        "tags_json": json.dumps(ir.tags),
        "ir_json": ir.model_dump_json(),
        "created_at": now,
    }, ["blueprint_id"])
    if new and ir.parent_ids:
        parents = list(dict.fromkeys(ir.parent_ids))  # the contract allows repeats; lineage does not need them
        insert_ignore(conn, blueprint_parents, [
            {"child_id": blueprint_id, "parent_id": p, "position": i} for i, p in enumerate(parents)
        ], ["child_id", "parent_id"])
    if new and ir.mutation is not None:
        m = ir.mutation
        insert_ignore(conn, blueprint_mutations, {
            "child_id": blueprint_id, "parent_id": m.parent_id, "operator": m.operator, "generation": m.generation,
            "detail": m.detail, "proposer": m.proposer,
        }, ["child_id"])
    return bool(new)


def blueprint_row(conn: Connection, blueprint_id: str) -> Any | None:
    """The ``blueprints`` row, or None."""
    return conn.execute(select(blueprints).where(blueprints.c.blueprint_id == blueprint_id)).first()


def artifacts_of(conn: Connection, blueprint_ids: list[str]) -> dict[str, list[CompiledKernelArtifact]]:
    """Every artifact of each blueprint, oldest first."""
    found: dict[str, list[CompiledKernelArtifact]] = {b: [] for b in blueprint_ids}
    if not blueprint_ids:
        return found
    rows = conn.execute(select(artifacts).where(artifacts.c.blueprint_id.in_(blueprint_ids))
                        .order_by(artifacts.c.created_at, artifacts.c.artifact_id))
    for row in rows:
        found[row.blueprint_id].append(artifact_from_row(row))
    return found


def get_record(conn: Connection, blueprint_id: str) -> BlueprintRecord | None:
    """The full record of one blueprint with every artifact, or None."""
    row = blueprint_row(conn, blueprint_id)
    if row is None:
        return None
    return blueprint_from_row(row, artifacts_of(conn, [blueprint_id])[blueprint_id])


def list_records(conn: Connection, *, limit: int, offset: int, blueprint_class: str | None = None,
                 name: str | None = None, layout: str | None = None,
                 features: int | None = None) -> tuple[list[BlueprintRecord], int]:
    """One page of blueprints, oldest first, and how many match in total."""
    conds = []
    if blueprint_class is not None:
        conds.append(blueprints.c.blueprint_class == blueprint_class)
    if name is not None:
        conds.append(blueprints.c.name == name)
    if layout is not None:
        conds.append(blueprints.c.input_layout == layout)
    if features is not None:
        conds.append(blueprints.c.input_features == features)
    total = conn.execute(select(func.count()).select_from(blueprints).where(*conds)).scalar_one()
    rows = conn.execute(select(blueprints).where(*conds)
                        .order_by(blueprints.c.created_at, blueprints.c.blueprint_id)
                        .limit(limit).offset(offset)).all()
    arts = artifacts_of(conn, [r.blueprint_id for r in rows])
    return [blueprint_from_row(r, arts[r.blueprint_id]) for r in rows], int(total)


def parents_of(conn: Connection, blueprint_id: str) -> list[str]:
    """Parent ids of a blueprint, in the order its IR listed them."""
    return list(conn.execute(select(blueprint_parents.c.parent_id)
                             .where(blueprint_parents.c.child_id == blueprint_id)
                             .order_by(blueprint_parents.c.position)).scalars())


def children_of(conn: Connection, blueprint_id: str) -> list[str]:
    """Ids of the blueprints that name this one as a parent."""
    return list(conn.execute(select(blueprint_parents.c.child_id)
                             .where(blueprint_parents.c.parent_id == blueprint_id)
                             .order_by(blueprint_parents.c.child_id)).scalars())


def mutations_of(conn: Connection, blueprint_ids: list[str]) -> dict[str, MutationRecord]:
    """The mutation records of those of ``blueprint_ids`` that were made by mutation."""
    if not blueprint_ids:
        return {}
    rows = conn.execute(select(blueprint_mutations).where(blueprint_mutations.c.child_id.in_(blueprint_ids)))
    return {r.child_id: MutationRecord(parent_id=r.parent_id, operator=r.operator, generation=r.generation,
                                       detail=r.detail, proposer=r.proposer) for r in rows}


def summaries(conn: Connection, blueprint_ids: list[str]) -> dict[str, Any]:
    """Name/class rows of the given blueprints that exist here (for lineage listings)."""
    if not blueprint_ids:
        return {}
    rows = conn.execute(select(blueprints.c.blueprint_id, blueprints.c.name, blueprints.c.blueprint_class,
                               blueprints.c.created_at).where(blueprints.c.blueprint_id.in_(blueprint_ids)))
    return {r.blueprint_id: r for r in rows}
