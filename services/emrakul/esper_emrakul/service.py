"""The Emrakul process: importance reports, protected zones and Narset's allocations in; pruning plans out.

Emrakul keeps, per region, the latest :class:`~esper_contracts.NarsetAllocationDecision` (its ``x_E`` and
Narset's spend ``c_T / pool``) and every protected zone. For each :class:`~esper_contracts.ImportanceReport` on
``analysis.importance`` it runs the planner of :mod:`esper_policy.emrakul` (pure: the same inputs give the same
plan, id included) and publishes the plan, if any, on ``pruning.plans`` keyed by run. Reports are made at
checkpoint boundaries, the safe boundaries lysis needs; a region with no allocation yet has ``x_E = 0`` and gets
no plan. Tolaria's outcomes (``pruning.outcomes``) are counted and shown under ``GET /api/v1/status``.

Malformed reports, zones, allocations or outcomes are dead-lettered by Oona on arrival.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from pydantic import Field

from esper_contracts import (
    Envelope,
    ImportanceReport,
    NarsetAllocationDecision,
    ProtectedZone,
    PruningOutcome,
    PruningPlan,
    Topic,
)
from esper_policy.emrakul import EmrakulSettings, plan_pruning, spend_share
from esper_runtime import Role, Service, ServiceSettings, load_settings, require
from esper_runtime.metrics import counter

log = logging.getLogger(__name__)


class EmrakulServiceSettings(ServiceSettings):
    """Emrakul's settings (``ESPER_*`` environment variables override the YAML file)."""

    service_name: str = "emrakul"
    subscription: str = Field(default="emrakul", description="prefix of Emrakul's subscriptions")
    probe_min: float = Field(default=0.02, ge=0)
    lysis_min: float = Field(default=0.8, ge=0)
    max_fraction: float = Field(default=0.3, gt=0, le=1)
    max_module_fraction: float = Field(default=0.5, gt=0, lt=1)


class Planner:
    """The state Emrakul plans from (zones, allocations) and the plans it has made."""

    def __init__(self, bus: Any, settings: EmrakulSettings) -> None:
        self.bus = bus
        self.settings = settings
        self._lock = threading.Lock()
        self.zones: dict[str, ProtectedZone] = {}
        self.allocations: dict[str, NarsetAllocationDecision] = {}
        self.plans: list[PruningPlan] = []
        self.outcomes: list[PruningOutcome] = []
        self.skipped = 0

    def on_zone(self, envelope: Envelope[Any]) -> None:
        """Keep one protected zone."""
        zone: ProtectedZone = envelope.payload
        with self._lock:
            self.zones[zone.zone_id] = zone

    def on_allocation(self, envelope: Envelope[Any]) -> None:
        """Keep the region's latest allocation (a later window replaces an earlier one)."""
        decision: NarsetAllocationDecision = envelope.payload
        with self._lock:
            known = self.allocations.get(decision.region_id)
            if known is None or decision.window >= known.window:
                self.allocations[decision.region_id] = decision

    def on_outcome(self, envelope: Envelope[Any]) -> None:
        """Record what Tolaria did with a plan."""
        with self._lock:
            self.outcomes.append(envelope.payload)

    def on_report(self, envelope: Envelope[Any]) -> PruningPlan | None:
        """Plan for one report and publish the plan (None: nothing to plan at this intensity)."""
        report: ImportanceReport = envelope.payload
        with self._lock:
            allocation = self.allocations.get(report.region_id)
            zones = list(self.zones.values())
        x_E = allocation.x_E if allocation is not None else 0.0
        plan = plan_pruning(report, zones, x_E, narset_spend_share=spend_share(allocation), safe_boundary=True,
                            settings=self.settings)
        if plan is None:
            with self._lock:
                self.skipped += 1
            log.info("no plan", extra={"run_id": report.run_id, "x_E": x_E, "report_id": report.report_id})
            return None
        self.bus.publish(Topic.PRUNING_PLANS, plan, key=plan.run_id, parent=envelope)
        self.bus.flush()
        with self._lock:
            self.plans.append(plan)
        log.info("plan published", extra={"run_id": plan.run_id, "mode": plan.mode.value, "x_E": x_E,
                                           "units": sum(len(a.indices) for a in plan.actions)})
        return plan

    def status(self) -> dict[str, Any]:
        """Counts for ``/api/v1/status``."""
        with self._lock:
            return {"zones": len(self.zones), "regions": sorted(self.allocations), "plans": len(self.plans),
                    "skipped_reports": self.skipped, "outcomes": len(self.outcomes),
                    "applied": sum(o.accepted for o in self.outcomes),
                    "last_plan": self.plans[-1].model_dump(mode="json") if self.plans else None}


class EmrakulService(Service):
    """Plans structured pruning at checkpoint boundaries."""

    description = "Turns importance reports into structured pruning plans within x_E, outside protected zones."
    settings: EmrakulServiceSettings

    def __init__(self, settings: EmrakulServiceSettings) -> None:
        super().__init__(settings)
        self.planner = Planner(self.bus, EmrakulSettings(
            probe_min=settings.probe_min, lysis_min=settings.lysis_min, max_fraction=settings.max_fraction,
            max_module_fraction=settings.max_module_fraction))
        self.plan_count = counter(self.registry, "esper_emrakul_plans")
        self.outcome_count = counter(self.registry, "esper_emrakul_outcomes")
        self.app.add_api_route("/api/v1/status", self.planner.status, methods=["GET"], tags=["emrakul"],
                               dependencies=[require(Role.VIEWER)])

    def _report(self, envelope: Envelope[Any]) -> None:
        plan = self.planner.on_report(envelope)
        if plan is not None:
            self.plan_count.labels(plan.mode.value).inc()

    def _outcome(self, envelope: Envelope[Any]) -> None:
        self.planner.on_outcome(envelope)
        o: PruningOutcome = envelope.payload
        self.outcome_count.labels("applied" if o.accepted else "rolled_back" if o.rolled_back else "rejected").inc()

    def on_start(self) -> None:
        """Follow zones and allocations from the oldest held, then take reports and outcomes."""
        sub = self.settings.subscription
        self.bus.subscribe(Topic.PROTECTED_ZONES, f"{sub}-zones", self.planner.on_zone, initial_position="earliest")
        self.bus.subscribe(Topic.NARSET_ALLOCATIONS, f"{sub}-allocations", self.planner.on_allocation,
                           initial_position="earliest")
        self.bus.subscribe(Topic.IMPORTANCE, f"{sub}-reports", self._report, initial_position="earliest")
        self.bus.subscribe(Topic.PRUNING_OUTCOMES, f"{sub}-outcomes", self._outcome, initial_position="earliest")
        self.bus.prepare(Topic.PRUNING_PLANS)
        log.info("emrakul ready", extra={"subscription": sub})


def create_service(config_file: str | Path | None = None, **overrides: Any) -> EmrakulService:
    """Entry point of ``esper serve emrakul``."""
    return EmrakulService(load_settings(EmrakulServiceSettings, config_file, **overrides))
