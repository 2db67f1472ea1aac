"""Narset inside the trainer process: the workers, and their links to Tamiyo (bus) and the coordinator (REST).

:class:`NarsetHost` is the :class:`~esper_policy.ControlPolicy` that Tolaria calls at every epoch
boundary. One boundary:

1. publish the ``SystemStatePacket`` to Tamiyo and wait for the ``AdaptationSignal`` answering it
   (matched by correlation id); without an answer in time, nothing changes this epoch;
2. wait briefly for this cycle's ``AllocationCommand`` s (they travel on another topic);
3. every worker allocates, summarises and spends for its regions — pricing reads the Kasmina layers
   directly, in this process; a worker that raises is reported crashed, the coordinator moves its
   regions, and their commands are handled by the new owners in the same boundary;
4. allocation decisions and proposals go on the bus, region reports go to the coordinator (which
   folds them into one report per domain for Tamiyo), and the paid-for commands go back to Tolaria.

Tolaria applies the returned commands to Kasmina at the same boundary, on every rank, so the commands
Narset lets through are exactly the ones every replica executes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from torch import nn

from esper_contracts import (
    AdaptationSignal,
    AllocationCommand,
    Assignment,
    Envelope,
    FieldReport,
    Heartbeat,
    KasminaControlCommand,
    ProposalDecision,
    ProtectedZone,
    RegionRegistration,
    RegionSpec,
    SeedTelemetry,
    SystemStatePacket,
    Topic,
)
from esper_oona import Bus, Subscription

from .allocator import AllocatorConfig
from .coordinator_link import CoordinatorLink, LocalCoordinator
from .pricing import SlotGeometry
from .summary import loss_trend, packet_for_tamiyo
from .worker import Boundary, BudgetLedger, NarsetWorker, WorkerConfig, WorkerOutput

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("esper_narset_worker")
STATE_VERSION = 1


@dataclass(frozen=True)
class HostConfig:
    """Timeouts of the host's exchanges."""

    decision_timeout_s: float = 30.0  # how long a boundary waits for Tamiyo's answer
    allocation_wait_s: float = 2.0  # how long it waits for this cycle's allocations after the answer
    heartbeat_interval_s: float | None = 5.0  # liveness beats between boundaries (epochs outlast timeouts)
    #: Tamiyo gets a summary packet with this many dormant candidates per region (None: every seed's telemetry).
    candidates_per_region: int | None = 2


class NarsetHost:
    """Narset's workers in the trainer process, serving Tolaria as its controller."""

    def __init__(
        self,
        model: nn.Module,
        bus: Bus,
        *,
        coordinator: CoordinatorLink | None = None,
        host_id: str | None = None,
        config: HostConfig | None = None,
        worker_config: WorkerConfig | None = None,
        allocator_config: AllocatorConfig | None = None,
    ) -> None:
        self.bus = bus
        self.host_id = host_id or f"{bus.producer_name}"
        self.config = config or HostConfig()
        self.worker_config = worker_config or WorkerConfig()
        self.allocator_config = allocator_config or AllocatorConfig()
        self.geometry = SlotGeometry.of(model)
        self.coordinator: CoordinatorLink = coordinator or LocalCoordinator()
        self.ledger = BudgetLedger()
        self.workers: dict[str, NarsetWorker] = {}
        self.owner: dict[str, str] = {}  # region -> worker id
        self.crashed: list[str] = []
        self.spent_total = 0.0
        # Each region's allocator state after its last successful boundary: a crashed worker's regions
        # resume from here, so the decision log stays exactly replayable across the crash.
        self._region_states: dict[str, dict[str, Any]] = {}
        self._cond = threading.Condition()
        self._signals: dict[str, AdaptationSignal] = {}  # correlation id -> answer
        # correlation id -> the span that received the answer: the spending that follows links to it
        self._signal_spans: dict[str, trace.SpanContext] = {}
        self._answer_span: trace.SpanContext | None = None
        self._rejected: dict[str, str] = {}  # proposal id -> reason, until the next boundary
        self._decisions: list[ProposalDecision] = []
        self._reports: list[FieldReport] = []
        self._run_id: str | None = None
        self._previous_val_loss: float | None = None
        self._tamiyo_state: dict[str, Any] | None = None  # Tamiyo's state after its last answer (checkpointed)
        self._push_tamiyo_state = False  # after a restore: the next packet carries that state to Tamiyo
        self._decide_lock = threading.Lock()
        self.zones: dict[str, ProtectedZone] = {}  # zone id -> latest version (a lifted one carries its expiry)
        sub = f"narset-host-{self.host_id}"
        self._subscriptions: list[Subscription] = [
            bus.subscribe(Topic.ADAPTATION_SIGNALS, sub, self._on_signal),
            bus.subscribe(Topic.BUDGET_ALLOCATIONS, sub, self._on_allocation),
            bus.subscribe(Topic.PROPOSAL_DECISIONS, sub, self._on_proposal_decision),
            bus.subscribe(Topic.FIELD_REPORTS, sub, self._on_field_report),
            bus.subscribe(Topic.PROTECTED_ZONES, sub, self._on_zone),
        ]
        self._link_lock = threading.Lock()  # one exchange with the coordinator at a time
        specs = [RegionSpec(region_id=r, seed_count=n) for r, n in self.geometry.seed_counts().items()]
        self._apply_assignment(self._exchange(RegionRegistration(regions=specs)), lost=set())
        self._last_epoch = 0
        self._stop = threading.Event()
        self._beater: threading.Thread | None = None
        if self.config.heartbeat_interval_s:
            self._beater = threading.Thread(target=self._beat_between_boundaries, name="narset-heartbeat", daemon=True)
            self._beater.start()

    # ------------------------------------------------------------------------------------------ bus handlers

    def _on_signal(self, envelope: Envelope[Any]) -> None:
        with self._cond:
            self._signals[envelope.correlation_id] = envelope.payload
            self._signal_spans[envelope.correlation_id] = trace.get_current_span().get_span_context()
            self._cond.notify_all()

    def _on_allocation(self, envelope: Envelope[Any]) -> None:
        command: AllocationCommand = envelope.payload
        if command.region_id in self.geometry.widths:
            self.ledger.grant(command)
            with self._cond:
                self._cond.notify_all()

    def _on_proposal_decision(self, envelope: Envelope[Any]) -> None:
        decision: ProposalDecision = envelope.payload
        with self._cond:
            self._decisions.append(decision)
            if not decision.approved:
                self._rejected[decision.proposal_id] = decision.reason

    def _on_zone(self, envelope: Envelope[Any]) -> None:
        zone: ProtectedZone = envelope.payload
        with self._cond:
            self.zones[zone.zone_id] = zone

    def _on_field_report(self, envelope: Envelope[Any]) -> None:
        report: FieldReport = envelope.payload
        if envelope.producer == self.bus.producer_name:
            return  # our own reports of cancelled germinations, echoed back
        with self._cond:
            if self._run_id is not None and report.run_id == self._run_id:
                self._reports.append(report)

    # ------------------------------------------------------------------------------------------ the boundary

    def decide(self, packet: SystemStatePacket) -> AdaptationSignal:
        """Ask Tamiyo, then let every worker allocate and pay; returns the commands Tolaria should apply."""
        with self._decide_lock:
            self._run_id = packet.run_id
            signal = self._ask_tamiyo_in_lockstep(packet)
            if signal is None:
                return AdaptationSignal(epoch=packet.epoch, reason="no answer from Tamiyo in time: no change")
            answer = self._answer_span
            links = [trace.Link(answer)] if answer is not None and answer.is_valid else None
            with _tracer.start_as_current_span("narset.spend", links=links,
                                               attributes={"esper.commands": len(signal.commands)}):
                return self._spend(packet, signal)

    def _spend(self, packet: SystemStatePacket, signal: AdaptationSignal) -> AdaptationSignal:
        """Steps 2-4 of the boundary: allocations, the workers' spending, what goes out, the commands paid for."""
        self._wait_for_allocations(packet.epoch)
        trend = loss_trend(self._previous_val_loss, packet.val_loss)
        self._previous_val_loss = packet.val_loss
        boundary = self._boundary(packet, signal, trend)

        outputs, crashed = self._run_workers(boundary, regions=None)
        reports = [r for out in outputs for r in out.reports]
        if crashed:
            # The coordinator moves the crashed workers' regions; their new owners handle this boundary.
            lost = {r for wid in crashed for r in self.workers[wid].regions}
            alive = sorted(set(self.workers) - set(crashed))
            beat = Heartbeat(window=packet.epoch, epoch=packet.epoch, workers=alive, crashed=crashed,
                             reports=reports, complete=False)
            self._apply_assignment(self._exchange(beat), lost=lost)
            retry, _ = self._run_workers(boundary, regions=lost)
            outputs += retry
            reports = [r for out in retry for r in out.reports]
        beat = Heartbeat(window=packet.epoch, epoch=packet.epoch, workers=sorted(self.workers), reports=reports)
        self._apply_assignment(self._exchange(beat), lost=set())
        self._last_epoch = packet.epoch
        if isinstance(self.coordinator, LocalCoordinator):
            # No telemetry tree without a coordinator: region reports go straight to Tamiyo.
            self.bus.publish_many(Topic.HEALTH_SUMMARIES, [r for out in outputs for r in out.reports])
        return self._publish_and_answer(packet, signal, outputs)

    def _ask_tamiyo_in_lockstep(self, packet: SystemStatePacket) -> AdaptationSignal | None:
        """Ask Tamiyo, keeping its state in step with the model's: "Tolaria saves host and Tamiyo in lockstep".

        After a restore (rollback, resume) the packet carries the state Tamiyo had at that checkpoint; when
        Tamiyo answers that it holds no state for the run (it restarted), the packet is sent again with it.
        Each answer's state is kept, so the next checkpoint holds the state matching the commands applied.
        """
        if self.config.candidates_per_region is not None:
            packet = packet_for_tamiyo(packet, self.config.candidates_per_region)
        if self._push_tamiyo_state and self._tamiyo_state is not None:
            packet = packet.model_copy(update={"controller_state": self._tamiyo_state})
        signal = self._ask_tamiyo(packet)
        if signal is not None and signal.controller_state_required and self._tamiyo_state is not None:
            log.warning("narset: Tamiyo restarted without state for %s; resending epoch %d with the checkpointed "
                        "state", packet.run_id, packet.epoch)
            signal = self._ask_tamiyo(packet.model_copy(update={"controller_state": self._tamiyo_state}))
        if signal is None or signal.controller_state_required:
            return None
        self._push_tamiyo_state = False
        if signal.controller_state is not None:
            self._tamiyo_state = signal.controller_state
        return signal.model_copy(update={"controller_state": None})  # Tolaria keeps it through state_dict

    def _ask_tamiyo(self, packet: SystemStatePacket) -> AdaptationSignal | None:
        envelope = self.bus.publish(Topic.SYSTEM_STATE, packet, key=packet.run_id)
        deadline = time.monotonic() + self.config.decision_timeout_s
        with self._cond:
            while envelope.correlation_id not in self._signals:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("narset: Tamiyo did not answer epoch %d within %.1fs", packet.epoch,
                                self.config.decision_timeout_s)
                    return None
                self._cond.wait(left)
            self._answer_span = self._signal_spans.pop(envelope.correlation_id, None)
            return self._signals.pop(envelope.correlation_id)

    def _wait_for_allocations(self, cycle: int) -> None:
        """Allocations for ``cycle`` are published before the answer, but on another topic: give them a moment."""
        deadline = time.monotonic() + self.config.allocation_wait_s
        regions = list(self.geometry.widths)
        with self._cond:
            while (self.ledger.oldest_cycle(regions) or -1) < cycle:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("narset: no allocations for cycle %d yet; spending from the previous cycle", cycle)
                    return
                self._cond.wait(left)

    def _boundary(self, packet: SystemStatePacket, signal: AdaptationSignal, trend: float) -> Boundary:
        seeds: dict[str, list[SeedTelemetry]] = {}
        for t in packet.seeds:
            seeds.setdefault(t.layer_id, []).append(t)
        commands: dict[str, list[KasminaControlCommand]] = {}
        for c in signal.commands:
            commands.setdefault(c.layer_id, []).append(c)
        with self._cond:
            rejected, self._rejected = self._rejected, {}
            zones = list(self.zones.values())
        metric = packet.validation_metric
        rolled_back = 0 < packet.epoch <= self._last_epoch  # an epoch that does not follow: a checkpoint restored
        return Boundary(window=packet.epoch, epoch=packet.epoch, run_id=packet.run_id, trend=trend, metric=metric,
                        seeds=seeds, commands=commands, rejected_proposals=rejected, val_loss=packet.val_loss,
                        rolled_back=rolled_back, zones=zones)

    def _run_workers(self, boundary: Boundary, regions: set[str] | None) -> tuple[list[WorkerOutput], list[str]]:
        """Step every worker (only over ``regions`` when given); a worker that raises is reported crashed."""
        outputs: list[WorkerOutput] = []
        crashed: list[str] = []
        for worker_id in sorted(self.workers):
            worker = self.workers[worker_id]
            if regions is not None and not worker.regions & regions:
                continue
            try:
                outputs.append(worker.step(boundary, self.ledger, self.geometry, only=regions))
            except Exception:
                log.exception("narset: worker %s crashed at epoch %d", worker_id, boundary.epoch)
                crashed.append(worker_id)
                continue
            for region in worker.regions if regions is None else worker.regions & regions:
                self._region_states[region] = worker.allocator.region(region).state_dict()
        self.crashed.extend(crashed)
        return outputs, crashed

    def _publish_and_answer(self, packet: SystemStatePacket, signal: AdaptationSignal,
                            outputs: Sequence[WorkerOutput]) -> AdaptationSignal:
        decisions = [d for out in outputs for d in out.decisions]
        proposals = [p for out in outputs for p in out.proposals]
        cancelled = [r for out in outputs for r in out.cancelled]
        self.bus.publish_many(Topic.NARSET_ALLOCATIONS, decisions, key=lambda d: d.region_id)
        self.bus.publish_many(Topic.PROPOSALS, proposals, key=lambda p: p.region_id)
        self.bus.publish_many(Topic.FIELD_REPORTS, cancelled)
        self.bus.publish_many(Topic.SCAFFOLD_REQUESTS, [r for out in outputs for r in out.scaffold_requests],
                              key=lambda r: r.region_id)
        self.spent_total += sum(out.spent for out in outputs)

        passed = {c.command_id for out in outputs for c in out.commands}
        # Tamiyo's order first (a release before a regrowth of one seed must stay in that order), then
        # germinations released from earlier boundaries. Commands for slots no worker owns pass unchanged:
        # Kasmina refuses an unknown slot itself, with a reason in the run log.
        owned = set(self.owner)
        commands = [c for c in signal.commands if c.command_id in passed or c.layer_id not in owned]
        in_signal = {c.command_id for c in signal.commands}
        commands += [c for out in outputs for c in out.commands if c.command_id not in in_signal]
        waiting = sum(out.waiting for out in outputs)
        reason = signal.reason
        if waiting:
            reason = f"{reason}; narset: {waiting} germination(s) waiting for budget".lstrip("; ")
        return AdaptationSignal(
            epoch=packet.epoch,
            commands=commands,
            optimizer_rebuild_required=bool(commands) or signal.optimizer_rebuild_required,
            emergency_rollback_required=signal.emergency_rollback_required,
            reason=reason[:2000],
        )

    # ------------------------------------------------------------------------------------------ the pool

    def _exchange(self, body: RegionRegistration | Heartbeat) -> Assignment:
        with self._link_lock:
            if isinstance(body, RegionRegistration):
                return self.coordinator.register(body)
            return self.coordinator.heartbeat(body)

    def _beat_between_boundaries(self) -> None:
        """Keep the workers alive in the coordinator's eyes while an epoch trains (no reports, no map change)."""
        interval = self.config.heartbeat_interval_s or 5.0
        while not self._stop.wait(interval):
            with self._decide_lock:  # a boundary's own heartbeat is enough while it runs
                workers = sorted(self.workers)
                epoch = self._last_epoch
            try:
                self._exchange(Heartbeat(window=epoch, epoch=epoch, workers=workers, complete=False))
            except Exception:  # an unreachable coordinator must never disturb training
                log.warning("narset: liveness heartbeat failed", exc_info=True)

    def _apply_assignment(self, assignment: Assignment, lost: set[str]) -> None:
        """Make the local workers match the coordinator's map; regions move with their allocator state.

        A region of a crashed worker resumes from its state after the last boundary that worker finished:
        the crashed worker's memory is not trusted, the host's snapshot is.
        """
        owner = assignment.owner_of()
        handover: dict[str, dict[str, Any] | None] = {}
        for worker_id, worker in list(self.workers.items()):
            for region in sorted(worker.regions):
                if owner.get(region) != worker_id:
                    state = worker.release(region)
                    handover[region] = self._region_states.get(region) if region in lost else state
            if worker_id not in assignment.workers:
                del self.workers[worker_id]
        for worker_id, spec in assignment.workers.items():
            if worker_id not in self.workers:
                self.workers[worker_id] = NarsetWorker(worker_id, self.worker_config, self.allocator_config)
            worker = self.workers[worker_id]
            for region in spec.regions:
                if region not in worker.regions:
                    worker.adopt(region, handover.get(region))
        self.owner = owner

    # ------------------------------------------------------------------------------------------ ControlPolicy

    def observe_outcomes(self, reports: Sequence[FieldReport]) -> None:
        """Outcomes Tolaria decided (rollback, crashed kernel) go to Tamiyo so its policy learns of them."""
        if reports:
            self.bus.publish_many(Topic.FIELD_REPORTS, list(reports))

    def drain_field_reports(self) -> list[FieldReport]:
        """Field reports Tamiyo published for this run since the last call."""
        with self._cond:
            reports, self._reports = self._reports, []
        return reports

    def proposal_decisions(self) -> list[ProposalDecision]:
        """Every answer Tamiyo gave to this host's proposals so far."""
        with self._cond:
            return list(self._decisions)

    def state_dict(self) -> dict[str, Any]:
        """Workers, ledger and the loss memory as plain JSON (stored in Tolaria's checkpoints)."""
        return {
            "version": STATE_VERSION,
            "workers": {wid: w.state_dict() for wid, w in self.workers.items()},
            "ledger": self.ledger.state_dict(),
            "previous_val_loss": self._previous_val_loss,
            "spent_total": self.spent_total,
            "tamiyo": self._tamiyo_state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (the next heartbeat re-syncs the map with the coordinator)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"narset host state version {state.get('version')!r} is not {STATE_VERSION}")
        self.workers = {}
        for wid, ws in state["workers"].items():
            worker = self.workers[wid] = NarsetWorker(wid, self.worker_config, self.allocator_config)
            worker.load_state_dict(ws)
        self.owner = {r: wid for wid, w in self.workers.items() for r in w.regions}
        self._region_states = {r: self.workers[wid].allocator.region(r).state_dict() for r, wid in self.owner.items()}
        self.ledger.load_state_dict(state["ledger"])
        self._previous_val_loss = state["previous_val_loss"]
        self.spent_total = float(state["spent_total"])
        self._tamiyo_state = state.get("tamiyo")
        self._push_tamiyo_state = self._tamiyo_state is not None  # Tamiyo must continue from this point too

    def close(self) -> None:
        """Detach from the bus and the coordinator (the bus itself belongs to the caller)."""
        self._stop.set()
        if self._beater is not None:
            self._beater.join(timeout=10)
        for sub in self._subscriptions:
            sub.close()
        self.coordinator.close()

    def __enter__(self) -> NarsetHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

