"""The Narset coordinator service: the region -> worker map, worker liveness, and the telemetry tree.

REST (for the trainer-side host):

* ``POST /api/v1/regions``   register regions, get the map;
* ``POST /api/v1/heartbeat`` live and crashed workers plus one window of region reports, get the map;
* ``GET  /api/v1/assignments`` and ``GET /api/v1/workers`` for people and tools.

The trainer's token needs the operator role for the two POSTs; the reads need a viewer.

Bus: it reads ``control.budget.allocations`` (to state each worker's budget quota) and publishes one
``HealthSummaryReport`` per domain and window on ``telemetry.health.summaries`` — the only health
telemetry Tamiyo needs, constant in size and count whatever the number of seeds. A background reaper
declares workers dead after ``heartbeat_timeout_s`` of silence and moves their regions.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from esper_contracts import AllocationCommand, Envelope, HealthSummaryReport, Topic
from esper_runtime import Role, Service, ServiceSettings, load_settings, require
from esper_runtime.metrics import StateCollector, counter, family

from .aggregation import TelemetryTree
from .mapping import Move, PoolLimits, RegionMap
from .schemas import (
    Assignment,
    Heartbeat,
    PoolView,
    RegionRegistration,
    WorkerAssignment,
    WorkerQuota,
    WorkerView,
)

if TYPE_CHECKING:
    from prometheus_client.core import Metric

log = logging.getLogger(__name__)


class CoordinatorSettings(ServiceSettings):
    """Settings of the coordinator (``ESPER_`` environment variables or a YAML file)."""

    service_name: str = "narset-coordinator"
    port: int = Field(default=8101, ge=0, le=65535)
    fan_in: int = Field(default=10, ge=2, description="Reports each aggregator folds")
    min_workers: int = Field(default=1, ge=1, le=100)
    max_workers: int = Field(default=100, ge=1, le=100)
    seeds_per_worker: int = Field(default=100, ge=1, description="Seed quota of one worker before another spawns")
    regions_per_worker: int = Field(default=20, ge=1)
    heartbeat_timeout_s: float = Field(default=30.0, gt=0)
    reap_interval_s: float = Field(default=1.0, gt=0)


class CoordinatorService(Service):
    """Singleton tactical coordinator."""

    description = ("Narset coordinator: maps regions to workers (spawning when load demands), watches their "
                   "heartbeats, reassigns a crashed worker's regions, folds region telemetry into one summary "
                   "per domain for Tamiyo.")

    def __init__(self, settings: CoordinatorSettings) -> None:
        super().__init__(settings)
        self.settings: CoordinatorSettings = settings
        self.map = RegionMap(PoolLimits(
            min_workers=settings.min_workers, max_workers=settings.max_workers,
            seeds_per_worker=settings.seeds_per_worker, regions_per_worker=settings.regions_per_worker,
            heartbeat_timeout_s=settings.heartbeat_timeout_s,
        ))
        self.tree = TelemetryTree(settings.fan_in)
        self._lock = threading.RLock()
        self._pending: dict[int, list[HealthSummaryReport]] = {}  # window -> region reports so far
        self._budgets: dict[str, float] = {}  # region -> latest allocation
        self._windows_folded = 0
        self._last_levels: list[int] = []
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None
        self.published: list[HealthSummaryReport] = []  # the most recent domain summaries (for the API and tests)
        self.heartbeats = counter(self.registry, "esper_narset_heartbeats")
        self.crashes = counter(self.registry, "esper_narset_worker_crashes")
        self.windows = counter(self.registry, "esper_narset_windows_folded")
        self.summaries = counter(self.registry, "esper_narset_summaries_published")
        self.registry.register(StateCollector(self._pool_families))
        trainer, viewer = [require(Role.OPERATOR)], [require(Role.VIEWER)]
        self.app.add_api_route("/api/v1/regions", self.register_regions, methods=["POST"], tags=["pool"],
                               response_model=Assignment, dependencies=trainer)
        self.app.add_api_route("/api/v1/heartbeat", self.heartbeat, methods=["POST"], tags=["pool"],
                               response_model=Assignment, dependencies=trainer)
        self.app.add_api_route("/api/v1/assignments", self.assignments, methods=["GET"], tags=["pool"],
                               response_model=Assignment, dependencies=viewer)
        self.app.add_api_route("/api/v1/workers", self.workers, methods=["GET"], tags=["pool"],
                               response_model=PoolView, dependencies=viewer)

    # ------------------------------------------------------------------------------------------ lifecycle

    def on_start(self) -> None:
        """Follow allocations and start the reaper."""
        self.bus.subscribe(Topic.BUDGET_ALLOCATIONS, self.name, self._on_allocation)
        self._stop.clear()
        self._reaper = threading.Thread(target=self._reap_loop, name="narset-reaper", daemon=True)
        self._reaper.start()

    def on_stop(self) -> None:
        """Stop the reaper."""
        self._stop.set()
        if self._reaper is not None:
            self._reaper.join(timeout=5)

    def _reap_loop(self) -> None:
        while not self._stop.wait(self.settings.reap_interval_s):
            with self._lock:
                self._log_moves(self.map.reap())

    def _on_allocation(self, envelope: Envelope[Any]) -> None:
        command: AllocationCommand = envelope.payload
        with self._lock:
            self._budgets[command.region_id] = command.atp_budget

    # ------------------------------------------------------------------------------------------ REST

    def register_regions(self, body: RegionRegistration) -> Assignment:
        """Place every region (spawning workers as load demands); returns the map."""
        with self._lock:
            self._log_moves([self.map.assign(spec.region_id, spec.seed_count) for spec in body.regions])
            return self._assignment()

    def heartbeat(self, body: Heartbeat) -> Assignment:
        """Record liveness and crashes, buffer the window's reports and fold it when complete."""
        self.heartbeats.inc()
        self.crashes.inc(len(body.crashed))
        with self._lock:
            unknown = [w for w in body.workers if not self.map.heartbeat(w)]
            if unknown:
                log.warning("heartbeat from workers the pool does not know (declared dead?): %s", unknown)
            for worker_id in body.crashed:
                self._log_moves(self.map.crashed(worker_id))
            self._log_moves(self.map.reap())
            for report in body.reports:
                if report.region_id not in self.map.owner:
                    self._log_moves([self.map.assign(report.region_id, report.seed_count)])
            self._pending.setdefault(body.window, []).extend(body.reports)
            if body.complete:
                self._fold_through(body.window)
            return self._assignment()

    def assignments(self) -> Assignment:
        """The current map."""
        with self._lock:
            return self._assignment()

    def workers(self) -> PoolView:
        """Live workers with their loads, quotas and heartbeat ages; dead ones; the last fan-in."""
        with self._lock:
            now = self.map.clock()
            views = [
                WorkerView(worker_id=w.worker_id, regions=sorted(w.regions), load=w.load,
                           seconds_since_heartbeat=round(now - w.last_seen, 3), quota=self._quota(w.worker_id))
                for w in sorted(self.map.workers.values(), key=lambda w: w.worker_id)
            ]
            return PoolView(workers=views, dead=list(self.map.dead), generation=self.map.generation,
                            windows_folded=self._windows_folded, last_tree_levels=list(self._last_levels))

    # ------------------------------------------------------------------------------------------ internals

    def _fold_through(self, window: int) -> None:
        """Fold and publish every buffered window up to ``window`` (older ones closed late, e.g. by a crash)."""
        for w in sorted(k for k in self._pending if k <= window):
            reports = self._pending.pop(w)
            if not reports:
                continue
            summaries, stats = self.tree.aggregate(reports)
            self.bus.publish_many(Topic.HEALTH_SUMMARIES, summaries, key=lambda r: r.region_id)
            self.published = summaries
            self._windows_folded += 1
            self._last_levels = stats.per_level
            self.windows.inc()
            self.summaries.inc(len(summaries))

    def _pool_families(self) -> list[Metric]:
        """The pool as it stands: workers live and dead, regions mapped, the map's generation, the last fan-in."""
        workers, regions = family("esper_narset_workers"), family("esper_narset_regions")
        generation, levels = family("esper_narset_map_generation"), family("esper_narset_tree_messages")
        with self._lock:
            workers.add_metric(["live"], len(self.map.workers))
            workers.add_metric(["dead"], len(self.map.dead))
            regions.add_metric([], len(self.map.owner))
            generation.add_metric([], self.map.generation)
            for level, messages in enumerate(self._last_levels):
                levels.add_metric([str(level)], messages)
        return [workers, regions, generation, levels]

    def _assignment(self) -> Assignment:
        return Assignment(
            generation=self.map.generation,
            workers={wid: WorkerAssignment(regions=regions, quota=self._quota(wid))
                     for wid, regions in self.map.assignments().items()},
        )

    def _quota(self, worker_id: str) -> WorkerQuota:
        regions = self.map.workers[worker_id].regions if worker_id in self.map.workers else {}
        return WorkerQuota(max_seeds=self.map.limits.seeds_per_worker, max_regions=self.map.limits.regions_per_worker,
                           atp_per_cycle=sum(self._budgets.get(r, 0.0) for r in regions))

    def _log_moves(self, moves: list[Move]) -> None:
        for m in moves:
            if m.previous != m.worker_id:
                log.info("region %s -> %s%s%s", m.region_id, m.worker_id,
                         f" (from {m.previous})" if m.previous else "", " (over quota)" if m.over_quota else "")


def create_service(config_file: str | Path | None = None, **overrides: Any) -> CoordinatorService:
    """Build the coordinator from a YAML file and overrides (``esper serve narset-coordinator``)."""
    return CoordinatorService(load_settings(CoordinatorSettings, config_file, **overrides))

