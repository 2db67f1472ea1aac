"""Blueprints in, records and kernels out: submission, the seed library, reads, lineage, field reports, queries."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from esper_contracts import (
    BlueprintClass,
    BlueprintIR,
    BlueprintLineage,
    BlueprintRecord,
    CompilationJob,
    CompiledKernelArtifact,
    FieldReport,
    KernelQuery,
    KernelQueryResult,
    KernelStatus,
    LineageRelative,
    PipelineBacklog,
    Topic,
)

from .context import UrzaContext
from .errors import BadRequest, NotFound
from .jobs import compilation_jobs
from .shapes import ShapeReport, check_blueprint
from .store import artifacts as artifact_rows
from .store import blueprints as blueprint_rows
from .store import field_reports as report_rows
from .store import outbox
from .store.kernel_query import run_kernel_query
from .store.rows import artifact_from_row

log = logging.getLogger(__name__)

#: Artifacts compiled and not yet judged by Urabrask.
AWAITING_VALIDATION = (KernelStatus.COMPILED, KernelStatus.VALIDATING)


@dataclass(frozen=True)
class StatusEvent:
    """One recorded status change of an artifact."""

    from_status: str | None
    to_status: str
    source: str
    detail: str | None
    at: str


class Catalog:
    """Read and register blueprints; everything here is idempotent."""

    def __init__(self, ctx: UrzaContext) -> None:
        self.ctx = ctx

    # --- blueprints ------------------------------------------------------------------------------------

    def check(self, ir: BlueprintIR) -> ShapeReport:
        """Shape- and size-check ``ir`` under this Urza's limits; BlueprintRejected says what is wrong."""
        s = self.ctx.settings
        return check_blueprint(ir, max_parameters=s.max_parameters, max_nodes=s.max_nodes, allowed_ops=s.allowed_ops)

    def submit(self, ir: BlueprintIR) -> tuple[BlueprintRecord, bool]:
        """Store ``ir`` and queue its compilation jobs; (record, True) when new, (existing record, False) if not.

        The blueprint, its lineage links and its jobs are written in one transaction, so a blueprint is
        never stored without its jobs, and a resubmission queues nothing new.
        """
        report = self.check(ir)
        blueprint_id = ir.ir_hash()
        now = self.ctx.clock()
        with self.ctx.db.write() as conn:
            created = blueprint_rows.insert_blueprint(conn, blueprint_id, ir, report.parameter_count, now)
            if created:
                for key, job in compilation_jobs(blueprint_id, ir, self.ctx.settings):
                    outbox.enqueue(conn, key, Topic.COMPILATION_JOBS, job, blueprint_id, now)
            record = blueprint_rows.get_record(conn, blueprint_id)
        self.ctx.after_commit()
        assert record is not None  # just written or already there, inside the same transaction
        if created:
            log.info("blueprint stored", extra={"blueprint_id": blueprint_id, "blueprint": ir.name,
                                                "parameters": report.parameter_count})
        return record, created

    def seed(self, irs: list[BlueprintIR]) -> int:
        """Register every library blueprint not stored yet; returns how many were new (0 on a second start-up)."""
        return sum(1 for ir in irs if self.submit(ir)[1])

    def get(self, blueprint_id: str) -> BlueprintRecord:
        """The record with every artifact; NotFound when unknown."""
        with self.ctx.db.read() as conn:
            record = blueprint_rows.get_record(conn, blueprint_id)
        if record is None:
            raise NotFound(f"no blueprint {blueprint_id!r}")
        return record

    def page(self, *, limit: int, offset: int, blueprint_class: str | None = None, name: str | None = None,
             layout: str | None = None, features: int | None = None) -> tuple[list[BlueprintRecord], int]:
        """One page of blueprints (oldest first) and the number matching."""
        with self.ctx.db.read() as conn:
            return blueprint_rows.list_records(conn, limit=limit, offset=offset, blueprint_class=blueprint_class,
                                               name=name, layout=layout, features=features)

    def lineage(self, blueprint_id: str) -> BlueprintLineage:
        """How a blueprint was made, and its direct parents and children (each with its own mutation record)."""
        with self.ctx.db.read() as conn:
            if blueprint_rows.blueprint_row(conn, blueprint_id) is None:
                raise NotFound(f"no blueprint {blueprint_id!r}")
            parents = blueprint_rows.parents_of(conn, blueprint_id)
            children = blueprint_rows.children_of(conn, blueprint_id)
            known = blueprint_rows.summaries(conn, parents + children)
            made = blueprint_rows.mutations_of(conn, [blueprint_id, *parents, *children])

        def entry(bid: str) -> LineageRelative:
            row = known.get(bid)
            if row is None:
                return LineageRelative(blueprint_id=bid, known=False)
            return LineageRelative(blueprint_id=bid, known=True, name=row.name,
                                   blueprint_class=BlueprintClass(row.blueprint_class), mutation=made.get(bid))

        return BlueprintLineage(blueprint_id=blueprint_id, mutation=made.get(blueprint_id),
                                parents=[entry(p) for p in parents], children=[entry(c) for c in children])

    def backlog(self) -> PipelineBacklog:
        """Work waiting in the pipeline: compilations not finished, artifacts not yet judged, jobs not yet sent."""
        with self.ctx.db.read() as conn:
            return PipelineBacklog(compilation_pending=artifact_rows.compilations_pending(conn, Topic.COMPILATION_JOBS),
                                   validation_pending=artifact_rows.count_with_status(conn, AWAITING_VALIDATION),
                                   outbox_unsent=outbox.backlog(conn))

    def artifact_counts(self) -> dict[str, int]:
        """How many artifacts are in each status (for metrics)."""
        with self.ctx.db.read() as conn:
            return artifact_rows.count_by_status(conn)

    def compilation_jobs(self, blueprint_id: str) -> list[tuple[CompilationJob, bool]]:
        """The compilation jobs queued for a blueprint and whether each has reached the bus."""
        self.get(blueprint_id)
        with self.ctx.db.read() as conn:
            rows = outbox.queued(conn, Topic.COMPILATION_JOBS, f"compile:{blueprint_id}:")
        return [(CompilationJob.model_validate_json(r.payload_json), r.published_at is not None) for r in rows]

    # --- field reports -------------------------------------------------------------------------------------

    def add_field_report(self, report: FieldReport, blueprint_id: str | None = None) -> bool:
        """Store a field report once (True when new); the blueprint must be known here."""
        if blueprint_id is not None and report.blueprint_id != blueprint_id:
            raise BadRequest(f"the report is about blueprint {report.blueprint_id!r}, "
                             f"but was posted to blueprint {blueprint_id!r}")
        with self.ctx.db.write() as conn:
            if blueprint_rows.blueprint_row(conn, report.blueprint_id) is None:
                raise NotFound(f"no blueprint {report.blueprint_id!r} for field report {report.report_id!r}")
            return report_rows.insert_report(conn, report, self.ctx.clock())

    def field_reports(self, blueprint_id: str, *, limit: int, offset: int) -> tuple[list[FieldReport], int]:
        """One page of a blueprint's field reports, oldest first."""
        with self.ctx.db.read() as conn:
            if blueprint_rows.blueprint_row(conn, blueprint_id) is None:
                raise NotFound(f"no blueprint {blueprint_id!r}")
            return report_rows.reports_of(conn, blueprint_id, limit=limit, offset=offset)

    # --- kernels --------------------------------------------------------------------------------------------

    def query(self, q: KernelQuery) -> KernelQueryResult:
        """Kernels matching ``q``, best first."""
        with self.ctx.db.read() as conn:
            return run_kernel_query(conn, q)

    def artifact(self, artifact_id: str) -> tuple[CompiledKernelArtifact, list[StatusEvent]]:
        """One artifact with its status history; NotFound when unknown."""
        with self.ctx.db.read() as conn:
            row = artifact_rows.artifact_row(conn, artifact_id)
            if row is None:
                raise NotFound(f"no kernel artifact {artifact_id!r}")
            events = [StatusEvent(e.from_status, e.to_status, e.source, e.detail, e.at.isoformat())
                      for e in artifact_rows.events_of(conn, artifact_id)]
        return artifact_from_row(row), events
