"""One Narset worker: the regions it looks after, their allocator, and the spending of their budgets.

At each boundary, for each of its regions, a worker

1. summarises the region's seed telemetry (one constant-size health report) and derives allocator inputs;
2. runs the allocator, producing a :class:`~esper_contracts.NarsetAllocationDecision`;
3. passes Tamiyo's commands for the region through the budget: ADVANCE, CULL and CANCEL are free (they
   move or end adaptations already paid for); a GERMINATE is paid for with ``risk × disruption`` from the
   region's allocation. When growth intensity is too low it waits; when the allocation is short it waits
   and the worker files a :class:`~esper_contracts.StrategicOpportunityProposal` for the shortfall.
   Waiting germinations are retried first at the next boundaries, when a funded proposal has raised the
   region's allocation, and dropped (reported CANCELLED so Tamiyo forgets them) after ``hold_cycles``,
   when their proposal is rejected, or when the seed is no longer dormant.

Stability is windowed per region (:class:`~esper_policy.stability.StabilityTracker`: rollback rate, anomaly
rate, loss jitter, persistent spikes) and caps the allocator's stability input. A region whose stability stays
bad for ``scaffold_after_windows`` windows gets a :class:`~esper_contracts.ScaffoldRequest` filed for it
(once; again only after its scaffold's zone is lifted). Protected zones are honoured: a GERMINATE inside a
zone or its embargo ring is dropped (reported CANCELLED), except the zone's own scaffold, which passes free
(Tamiyo paid for it from the emergency pool).

Spending goes through a :class:`BudgetLedger` that the host shares between its workers, so a worker that
crashes loses no record of what was already spent in the cycle.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from esper_contracts import (
    AllocationCommand,
    CommandType,
    FieldReport,
    HealthSummaryReport,
    KasminaControlCommand,
    NarsetAllocationDecision,
    Outcome,
    ProtectedZone,
    ScaffoldRequest,
    SeedStage,
    SeedTelemetry,
    StrategicOpportunityProposal,
    field_report,
)
from esper_policy.scaffolds import blocking_zone, is_scaffold_command
from esper_policy.stability import StabilityConfig, StabilityObservation, StabilityTracker

from .allocator import Allocator, AllocatorConfig, growth_permitted, pressures
from .pricing import SlotGeometry, adaptation_cost, kernel_risk
from .summary import allocator_inputs, summarize_region

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerConfig:
    """How a worker prices and waits."""

    atp_per_full_disruption: float = 100.0  # price of rewriting every seeded feature at risk 1
    default_risk: float = 0.5  # risk of a kernel without a validation report
    hold_cycles: int = 3  # a germination waits at most this many cycles for budget or intensity
    proposal_margin: float = 1.05  # ask a little more than the shortfall, so rounding never leaves it short
    scaffold_after_windows: int = 3  # bad-stability windows in a row before a scaffold is requested
    scaffold_blueprint: str = "scaffold_mlp"  # the scaffold family asked for
    scaffold_ttl_epochs: int = 12
    scaffold_ask: float = 1.0  # emergency energy asked for
    stability: StabilityConfig = field(default_factory=StabilityConfig)


class BudgetLedger:
    """Each region's latest allocation and what has been spent against each cycle (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.allocations: dict[str, AllocationCommand] = {}
        self.spent: dict[str, dict[int, float]] = {}  # region -> cycle -> ATP spent

    def grant(self, command: AllocationCommand) -> None:
        """Record an allocation; an older cycle never replaces a newer one (redelivery, reordering)."""
        with self._lock:
            known = self.allocations.get(command.region_id)
            if known is None or command.cycle >= known.cycle:
                self.allocations[command.region_id] = command

    def allocation(self, region_id: str) -> AllocationCommand | None:
        """The region's current allocation."""
        with self._lock:
            return self.allocations.get(region_id)

    def oldest_cycle(self, regions: Iterable[str]) -> int | None:
        """The oldest cycle among the allocations of ``regions`` (None while any of them has none)."""
        with self._lock:
            cycles = [self.allocations[r].cycle if r in self.allocations else None for r in regions]
        if not cycles or any(c is None for c in cycles):
            return None
        return min(c for c in cycles if c is not None)

    def balance(self, region_id: str) -> float:
        """ATP left in the region's current cycle (0 without an allocation)."""
        with self._lock:
            return self._balance(region_id)

    def _balance(self, region_id: str) -> float:
        alloc = self.allocations.get(region_id)
        if alloc is None:
            return 0.0
        return alloc.atp_budget - self.spent.get(region_id, {}).get(alloc.cycle, 0.0)

    def try_spend(self, region_id: str, amount: float) -> bool:
        """Debit ``amount`` from the region's current cycle if it is covered; False (and nothing spent) if not."""
        with self._lock:
            alloc = self.allocations.get(region_id)
            if alloc is None or amount > self._balance(region_id):
                return False
            cycles = self.spent.setdefault(region_id, {})
            cycles[alloc.cycle] = cycles.get(alloc.cycle, 0.0) + amount
            return True

    def spent_this_cycle(self, region_id: str) -> float:
        """ATP the region spent in its current cycle."""
        with self._lock:
            alloc = self.allocations.get(region_id)
            return 0.0 if alloc is None else self.spent.get(region_id, {}).get(alloc.cycle, 0.0)

    def state_dict(self) -> dict[str, Any]:
        """Allocations and spending as plain JSON."""
        with self._lock:
            return {"allocations": {r: a.model_dump(mode="json") for r, a in self.allocations.items()},
                    "spent": {r: {str(c): v for c, v in cs.items()} for r, cs in self.spent.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        with self._lock:
            self.allocations = {r: AllocationCommand.model_validate(a) for r, a in state["allocations"].items()}
            self.spent = {r: {int(c): float(v) for c, v in cs.items()} for r, cs in state["spent"].items()}


@dataclass(frozen=True)
class Boundary:
    """What a worker sees at one epoch boundary, already split by region."""

    window: int
    epoch: int
    run_id: str
    trend: float  # relative validation-loss change over the window
    metric: float  # validation metric (higher is better), for the reports of dropped germinations
    seeds: Mapping[str, Sequence[SeedTelemetry]]
    commands: Mapping[str, Sequence[KasminaControlCommand]]
    rejected_proposals: Mapping[str, str] = field(default_factory=dict)  # proposal id -> Tamiyo's reason
    val_loss: float | None = None  # the window's validation loss, for the stability trackers
    rolled_back: bool = False  # the trainer restored a checkpoint since the last boundary
    zones: Sequence[ProtectedZone] = ()  # protected zones in force


@dataclass
class WorkerOutput:
    """Everything a worker produced at one boundary."""

    commands: list[KasminaControlCommand] = field(default_factory=list)
    decisions: list[NarsetAllocationDecision] = field(default_factory=list)
    reports: list[HealthSummaryReport] = field(default_factory=list)
    proposals: list[StrategicOpportunityProposal] = field(default_factory=list)
    cancelled: list[FieldReport] = field(default_factory=list)
    scaffold_requests: list[ScaffoldRequest] = field(default_factory=list)
    spent: float = 0.0
    waiting: int = 0


@dataclass
class _Waiting:
    """A germination and the commands Tamiyo sent after it for the same seed (e.g. its move to LOADING)."""

    bundle: list[KasminaControlCommand]
    since_window: int
    proposal_id: str | None = None

    @property
    def command(self) -> KasminaControlCommand:
        """The GERMINATE that has to be paid for."""
        return self.bundle[0]


class NarsetWorker:
    """Looks after a set of regions: allocates their intensities and spends their budgets."""

    def __init__(self, worker_id: str, config: WorkerConfig | None = None,
                 allocator_config: AllocatorConfig | None = None) -> None:
        self.worker_id = worker_id
        self.config = config or WorkerConfig()
        self.allocator = Allocator(allocator_config)
        self.regions: set[str] = set()
        self.waiting: dict[str, _Waiting] = {}  # seed id -> germination waiting for budget or intensity
        self.stability: dict[str, StabilityTracker] = {}
        self._errors: dict[str, int] = {}  # region -> kernel errors seen so far (telemetry counts are cumulative)
        self.scaffold_requested: dict[str, str] = {}  # region -> request id, while its scaffold or zone lasts
        self._requested_at: dict[str, int] = {}  # region -> epoch its request was filed

    # ------------------------------------------------------------------------------------------ regions

    def adopt(self, region_id: str, state: Mapping[str, Any] | None = None) -> None:
        """Start looking after a region, resuming its allocator from ``state`` when one is handed over."""
        self.regions.add(region_id)
        self.allocator.adopt(region_id, state)

    def release(self, region_id: str) -> dict[str, Any] | None:
        """Stop looking after a region; returns its allocator state for the next owner."""
        self.regions.discard(region_id)
        for seed_id in [s for s, w in self.waiting.items() if w.command.layer_id == region_id]:
            del self.waiting[seed_id]
        return self.allocator.forget(region_id)

    # ------------------------------------------------------------------------------------------ a boundary

    def step(self, boundary: Boundary, ledger: BudgetLedger, geometry: SlotGeometry,
             only: set[str] | None = None) -> WorkerOutput:
        """Allocate, summarise and spend for every region of this worker (or those in ``only``), in sorted order."""
        out = WorkerOutput()
        for region_id in sorted(self.regions if only is None else self.regions & only):
            self._step_region(region_id, boundary, ledger, geometry, out)
        return out

    def _step_region(self, region_id: str, b: Boundary, ledger: BudgetLedger, geometry: SlotGeometry,
                     out: WorkerOutput) -> None:
        seeds = b.seeds.get(region_id, ())
        alloc = ledger.allocation(region_id)
        pool = alloc.energy_budget if alloc is not None and alloc.energy_budget > 0 else None
        windowed = self._observe_stability(region_id, seeds, b, out)
        decision = self.allocator.step(region_id, allocator_inputs(seeds, b.trend, windowed), b.window, pool)
        out.decisions.append(decision)

        dormant: set[str] = {t.seed_id for t in seeds if t.stage is SeedStage.DORMANT}
        # A GERMINATE and every later command for the same seed form a bundle paid for together: moving a
        # seed to LOADING only makes sense once its germination has been bought. Everything else is free,
        # since it moves or ends an adaptation that was already paid for.
        bundles: dict[str, list[KasminaControlCommand]] = {}
        for cmd in b.commands.get(region_id, ()):
            seed_id: str = cmd.seed_id
            if is_scaffold_command(cmd):  # paid from the emergency pool by Tamiyo
                out.commands.append(cmd)
                continue
            zone = blocking_zone(cmd, b.zones, b.epoch)
            if zone is not None:
                log.info("narset %s: germination of %s dropped: inside protected zone %s", self.worker_id, seed_id,
                         zone.zone_id)
                out.cancelled.append(_cancelled(cmd, b))
                continue
            if seed_id in bundles:
                bundles[seed_id].append(cmd)
            elif cmd.command is CommandType.GERMINATE:
                bundles[seed_id] = [cmd]
            else:
                out.commands.append(cmd)

        # Older waiting germinations first; a newer germination of the same seed replaces the waiting one.
        queue: list[_Waiting] = []
        for seed_id, w in sorted(self.waiting.items()):
            if w.command.layer_id != region_id or seed_id in bundles:
                continue
            why = self._give_up_reason(w, seed_id, dormant, b)
            if why is not None:
                del self.waiting[seed_id]
                log.info("narset %s: germination of %s dropped: %s", self.worker_id, seed_id, why)
                out.cancelled.append(_cancelled(w.command, b))
            else:
                queue.append(w)
        queue.extend(_Waiting(bundle, b.window) for bundle in bundles.values())

        smoothed = decision.smoothed_inputs
        need, _ = pressures(smoothed.progress, smoothed.stability, smoothed.efficiency, self.allocator.config)
        for w in queue:
            seed_id = w.command.seed_id
            price = self._price(w.command, geometry)
            if growth_permitted(decision.x_T, self.allocator.config) and ledger.try_spend(region_id, price):
                self.waiting.pop(seed_id, None)
                out.commands.extend(w.bundle)
                out.spent += price
                continue
            self.waiting[seed_id] = w
            short = price - ledger.balance(region_id)
            if growth_permitted(decision.x_T, self.allocator.config) and short > 0 and w.proposal_id is None:
                w.proposal_id = f"sop-{seed_id}-w{b.window}"
                out.proposals.append(self._proposal(w, region_id, b, short, price, need))

        out.waiting += sum(1 for w in self.waiting.values() if w.command.layer_id == region_id)
        domain = alloc.domain_id if alloc is not None else None
        out.reports.append(summarize_region(region_id, domain, seeds, window=b.window, epoch=b.epoch, trend=b.trend,
                                            budget_spent=ledger.spent_this_cycle(region_id)))

    def _observe_stability(self, region_id: str, seeds: Sequence[SeedTelemetry], b: Boundary,
                           out: WorkerOutput) -> float | None:
        """Fold this window into the region's stability tracker; file a scaffold request when it stays bad."""
        if b.val_loss is None:
            return None
        tracker = self.stability.setdefault(region_id, StabilityTracker(self.config.stability))
        errors = sum(t.error_count for t in seeds)
        new_errors = max(0, errors - self._errors.get(region_id, 0))
        self._errors[region_id] = errors
        gradient = max((t.gradient_norm for t in seeds), default=None)
        signals = tracker.observe(StabilityObservation(loss=b.val_loss, rolled_back=b.rolled_back,
                                                       kernel_errors=new_errors, gradient_norm=gradient))
        requested = self.scaffold_requested.get(region_id)
        if requested is not None and not any(z.scaffold_id == requested and z.covers(region_id, b.epoch)
                                             for z in b.zones) \
                and b.epoch >= self._requested_at.get(region_id, 0) + self.config.scaffold_ttl_epochs:
            del self.scaffold_requested[region_id]  # refused, or its zone lifted: a TTL later it may ask again
        if signals.bad_windows >= self.config.scaffold_after_windows and region_id not in self.scaffold_requested:
            request = ScaffoldRequest(
                request_id=f"scaffold-{region_id}-e{b.epoch}-{b.run_id}"[:256], region_id=region_id,
                blueprint_id=self.config.scaffold_blueprint, ttl_epochs=self.config.scaffold_ttl_epochs,
                emergency=True, ask=self.config.scaffold_ask,
                reason=(f"stability {signals.score:.2f} for {signals.bad_windows} windows: rollback rate "
                        f"{signals.rollback_rate:.2f}, anomaly rate {signals.anomaly_rate:.2f}, loss jitter "
                        f"{signals.loss_jitter:.3f}, persistent spike {signals.persistent_spike}"),
            )
            self.scaffold_requested[region_id] = request.request_id
            self._requested_at[region_id] = b.epoch
            out.scaffold_requests.append(request)
        return signals.score

    def _give_up_reason(self, w: _Waiting, seed_id: str, dormant: set[str], b: Boundary) -> str | None:
        if w.proposal_id is not None and w.proposal_id in b.rejected_proposals:
            return f"proposal {w.proposal_id} rejected: {b.rejected_proposals[w.proposal_id]}"
        if seed_id not in dormant:
            return "seed is no longer dormant"
        if b.window - w.since_window >= self.config.hold_cycles:
            return f"no budget or growth intensity for {self.config.hold_cycles} cycles"
        return None

    def _price(self, cmd: KasminaControlCommand, geometry: SlotGeometry) -> float:
        report = geometry.report_of(cmd.kernel_artifact_id) if cmd.kernel_artifact_id else None
        risk = kernel_risk(report, self.config.default_risk)
        return adaptation_cost(risk, geometry.disruption(cmd.layer_id, cmd.seed_index),
                               self.config.atp_per_full_disruption)

    def _proposal(self, w: _Waiting, region_id: str, b: Boundary, short: float, price: float,
                  need: float) -> StrategicOpportunityProposal:
        cmd = w.command
        assert w.proposal_id is not None
        return StrategicOpportunityProposal(
            proposal_id=w.proposal_id,
            region_id=region_id,
            epoch=b.epoch,
            opportunity=(f"{region_id} needs repair (need {need:.2f}); Tamiyo chose to germinate "
                         f"{cmd.seed_id} but the region's allocation is {short:.3f} ATP short of its price"),
            plan=[f"GERMINATE {cmd.seed_id} with kernel {cmd.kernel_artifact_id}", "graft with a staged alpha ramp"],
            ask=short * self.config.proposal_margin,
            expected_roi=max(0.01, need),
            mitigations=["alpha ramps from 0, so the host is untouched until grafting",
                         "Tamiyo culls on regression at evaluation", f"total price {price:.3f} ATP"],
            submitted_by=self.worker_id,
        )

    # ------------------------------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Regions, allocator memory and waiting germinations as plain JSON."""
        return {
            "regions": sorted(self.regions),
            "allocator": self.allocator.state_dict(),
            "waiting": {s: {"bundle": [c.model_dump(mode="json") for c in w.bundle],
                            "since_window": w.since_window, "proposal_id": w.proposal_id}
                        for s, w in self.waiting.items()},
            "stability": {r: t.state_dict() for r, t in self.stability.items()},
            "errors": dict(self._errors),
            "scaffold_requested": dict(self.scaffold_requested),
            "requested_at": dict(self._requested_at),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        self.regions = set(state["regions"])
        self.allocator.load_state_dict(state["allocator"])
        self.waiting = {s: _Waiting([KasminaControlCommand.model_validate(c) for c in w["bundle"]],
                                    int(w["since_window"]), w["proposal_id"]) for s, w in state["waiting"].items()}
        self.stability = {}
        for region, tracker_state in state.get("stability", {}).items():
            self.stability[region] = StabilityTracker(self.config.stability)
            self.stability[region].load_state_dict(tracker_state)
        self._errors = {r: int(n) for r, n in state.get("errors", {}).items()}
        self.scaffold_requested = dict(state.get("scaffold_requested", {}))
        self._requested_at = {r: int(e) for r, e in state.get("requested_at", {}).items()}


def _cancelled(cmd: KasminaControlCommand, b: Boundary) -> FieldReport:
    """The report that tells Tamiyo a germination it decided never happened."""
    return field_report(seed_id=cmd.seed_id, outcome=Outcome.CANCELLED, blueprint_id=cmd.blueprint_id,
                        kernel_artifact_id=cmd.kernel_artifact_id, run_id=b.run_id, pre_metric=b.metric,
                        post_metric=b.metric, epoch=b.epoch, germinated_epoch=None)
