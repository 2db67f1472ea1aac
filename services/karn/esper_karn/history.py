"""Karn's memory: the library as Karn knows it and the outcome history of every blueprint, in its SQL store.

Everything written here is idempotent (reports are keyed by what makes them unique, blueprints by IR hash),
so a redelivered message or a repeated sync changes nothing. The mutation policy and the parents' records
are computed from these tables whenever a round needs them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime

from esper_contracts import BlueprintIR, FieldReport, UrabraskValidationReport, utc_now
from esper_contracts.ir_shapes import IRShapeError
from esper_storage import Database, upgrade

from .features import ir_features
from .rewards import BlueprintOutcome
from .store import queries
from .store.queries import LibraryEntry

log = logging.getLogger(__name__)

MIGRATIONS = "esper_karn.migrations"


class KarnHistory:
    """Reads and writes of Karn's store, each in its own transaction. Thread-safe (the database is)."""

    def __init__(self, db: Database, clock: Callable[[], datetime] = utc_now) -> None:
        self.db = db
        self.clock = clock

    def migrate(self) -> None:
        """Bring the store to the newest schema (idempotent; replicas starting together migrate once)."""
        upgrade(self.db, MIGRATIONS)

    # --- writes ----------------------------------------------------------------------------------------

    def record_field_report(self, report: FieldReport) -> bool:
        """Keep a field report; True when it is new."""
        with self.db.write() as conn:
            return queries.insert_field_report(conn, report, self.clock())

    def record_validation_report(self, report: UrabraskValidationReport) -> bool:
        """Keep a validation report; True when it is new."""
        with self.db.write() as conn:
            return queries.insert_validation_report(conn, report, self.clock())

    def remember(self, ir: BlueprintIR, *, proposed_by_karn: bool = False) -> bool:
        """Add a blueprint to the library view; True when it is new. A design that cannot be built is skipped."""
        try:
            vector = ir_features(ir)
        except IRShapeError as exc:
            log.warning("blueprint %s left out of Karn's library: %s", ir.name, exc)
            return False
        with self.db.write() as conn:
            return queries.insert_blueprint(conn, ir, vector, proposed_by_karn=proposed_by_karn, now=self.clock())

    def mark_failed(self, blueprint_id: str) -> None:
        """Record that no artifact of the blueprint compiled."""
        with self.db.write() as conn:
            queries.mark_failed(conn, blueprint_id, self.clock())

    # --- reads -----------------------------------------------------------------------------------------

    def library(self, *, layout: str | None = None, features: int | None = None) -> list[LibraryEntry]:
        """The library view, oldest first, optionally for one interface."""
        with self.db.read() as conn:
            return queries.library(conn, layout=layout, features=features)

    def ir(self, blueprint_id: str) -> BlueprintIR | None:
        """A stored IR, or None."""
        with self.db.read() as conn:
            return queries.blueprint_ir(conn, blueprint_id)

    def outcomes(self, blueprint_ids: Iterable[str] | None = None) -> dict[str, BlueprintOutcome]:
        """What is known about each blueprint of the library (or of ``blueprint_ids``)."""
        with self.db.read() as conn:
            return queries.outcomes(conn, blueprint_ids)

    def unresolved_children(self) -> list[str]:
        """Karn's children not judged yet, oldest first."""
        with self.db.read() as conn:
            return queries.unresolved_children(conn)

    def known_ids(self) -> set[str]:
        """Every blueprint id in the library view."""
        with self.db.read() as conn:
            return queries.known_ids(conn)

    def counts(self) -> dict[str, int]:
        """Library size, own children, reports kept."""
        with self.db.read() as conn:
            return queries.counts(conn)
