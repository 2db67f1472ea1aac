"""Tamiyo's strategic core, free of any transport: messages in, messages out, views for the REST API.

One cycle per SystemStatePacket (one epoch boundary), in this order:

1. learn the regions (Kasmina layers) and their domains from the packet;
2. advance protected zones: scaffold sunsets, volatile domains, lifting at a clean checkpoint (a packet
   for epoch ``e + 1`` right after ``e`` means ``e``'s checkpoint held: Tolaria checkpoints only healthy
   epochs, and a rollback shows up as an epoch that does not follow);
3. mint the cycle's budget (Tamiyo-Prime shares it between domains by criticality), grant queued
   scaffold requests (the scaffold steward funds them from its emergency pool, protects the region and its
   embargo ring, and germinates a scaffold kernel there; emergency ATP for the cycle when in crisis), fund
   queued proposals;
4. run the control policy on the packet, with the zones in force (no germination inside a zone or ring) and
   hands off the scaffold seeds (Kasmina's scaffold supervisor steers them);
5. emit, in this order: zones, proposal decisions, allocations, the adaptation signal with its commands
   (last, so a trainer that has its answer also has its allocations in flight), field reports.

Every decision is recorded with the inputs that drove it, for ``GET /api/v1/decisions``. The caller
serialises access (the service holds a lock around every call).
"""

from __future__ import annotations

import fnmatch
import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from esper_contracts import (
    ACTIVE_STAGES,
    AdaptationSignal,
    FieldReport,
    HealthSummaryReport,
    KasminaControlCommand,
    KernelQuery,
    PolicyUpdate,
    ProposalDecision,
    ScaffoldRequest,
    SeedStage,
    SeedTelemetry,
    StrategicOpportunityProposal,
    SystemStatePacket,
    Topic,
)
from esper_policy import (
    ControlPolicy,
    LearnedPolicy,
    PolicyArtifactError,
    PolicyBase,
    PolicyNetwork,
    TamiyoConfig,
    load_artifact,
)
from esper_policy.network import artifact_sha256
from esper_policy.scaffolds import ScaffoldSteward

from .domains import HierarchicalControlConfig
from .economy import BudgetEconomy, Cycle, Region, reject_unknown_region
from .kernels import KernelsUnavailable, RiskFilter
from .prime import from_micro
from .tally import Tally
from .zones import ProtectedZones

log = logging.getLogger(__name__)

#: A policy update may scale the minted budget at most this much (a typo of 100 must not flood the model).
MAX_RESOURCE_BUDGET = 4.0
MAX_CONCURRENT_ADAPTATIONS = 1024
MAX_EPOCH_SETTING = 10_000


class PolicyUpdateError(ValueError):
    """A policy update that is valid as a contract but out of the range Tamiyo accepts; says why."""


class StalePolicyError(ValueError):
    """A policy update older than the one in force."""


#: Fetches a learned policy version: (the artifact document, the digest its store sent with it).
PolicyFetcher = Callable[[str], tuple[dict[str, Any], str]]


@dataclass(frozen=True)
class Outgoing:
    """One message to publish (the service publishes it; the catalogue test counts it as publishing)."""

    topic: str
    payload: BaseModel
    key: str | None = None


@dataclass
class DecisionRecord:
    """A decision and what drove it (the decisions API returns these, newest first)."""

    kind: str  # adaptation | allocation | proposal | scaffold | policy
    epoch: int
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="milliseconds"))


@dataclass(frozen=True)
class ControllerOptions:
    """Economy and zone settings that do not live in the domains file."""

    allocator_pool: float = 1.5
    emergency_tranche_fraction: float = 0.5  # share of the emergency pool one scaffold in crisis may take
    ring_radius: int = 1
    volatile_enter: float = 0.6
    volatile_exit: float = 0.3
    history: int = 500
    scaffold_pool: float = 2.0  # the scaffold steward's emergency pool (energy; unused energy returns to it)


class TamiyoController:
    """Policy, budget economy, Tamiyo-Prime and protected zones behind one message-in/message-out surface."""

    def __init__(
        self,
        policy_factory: Callable[[TamiyoConfig, RiskFilter], ControlPolicy],
        kernels: RiskFilter,
        base_config: TamiyoConfig,
        domains: HierarchicalControlConfig,
        options: ControllerOptions | None = None,
        policy_fetcher: PolicyFetcher | None = None,
    ) -> None:
        self.options = options or ControllerOptions()
        self.policy_fetcher = policy_fetcher
        self.network: PolicyNetwork | None = None  # a learned policy served from a PolicyUpdate (None: the config's)
        self.kernels = kernels
        self.policy_factory = policy_factory
        self.base_config = base_config
        self.update = PolicyUpdate()
        self.policy = policy_factory(base_config, kernels)
        self.domains = domains
        self.economy = BudgetEconomy(domains, self.options.allocator_pool)
        self.zones = ProtectedZones(self.options.ring_radius, self.options.volatile_enter, self.options.volatile_exit)
        self.regions: dict[str, Region] = {}  # in model order (first seen)
        self.books: Cycle | None = None
        self.packet: SystemStatePacket | None = None
        self.decisions: deque[DecisionRecord] = deque(maxlen=self.options.history)
        self._proposals: dict[str, StrategicOpportunityProposal] = {}  # queued until the next cycle
        self._answered: dict[str, ProposalDecision] = {}  # for redelivered proposals
        self._scaffolds: list[ScaffoldRequest] = []
        self.steward = ScaffoldSteward(self.options.scaffold_pool, self.options.ring_radius)
        self.escalations: list[dict[str, Any]] = []  # regions whose scaffold ran out of time
        self._last_epoch: int | None = None
        self.run_id: str | None = None
        self.summaries_received = 0
        self.kernel_source_failures = 0  # boundaries answered "wait" because Urza was down
        self.tally = Tally()  # running totals for /metrics

    # ------------------------------------------------------------------------------------------ inputs

    def on_health_summary(self, report: HealthSummaryReport) -> None:
        """A domain's summary for Tamiyo-Prime."""
        self.economy.prime.observe(report)
        self.summaries_received += 1
        domain = report.domain_id or report.region_id
        self.tally.spent_atp[domain] = self.tally.spent_atp.get(domain, 0.0) + report.budget_spent

    def on_proposal(self, proposal: StrategicOpportunityProposal) -> list[Outgoing]:
        """Answer an unknown region at once; queue the rest for the next cycle (a redelivery gets its answer again)."""
        answered = self._answered.get(proposal.proposal_id)
        if answered is not None:
            return [Outgoing(Topic.PROPOSAL_DECISIONS, answered, answered.region_id)]
        if proposal.region_id not in self.regions:
            decision = reject_unknown_region(proposal, self.regions)
            self._remember(proposal, decision, "refused")
            return [Outgoing(Topic.PROPOSAL_DECISIONS, decision, decision.region_id)]
        self._proposals[proposal.proposal_id] = proposal
        return []

    def on_scaffold_request(self, request: ScaffoldRequest) -> None:
        """Queue a scaffold request for the next cycle."""
        if all(r.request_id != request.request_id for r in self._scaffolds):
            self._scaffolds.append(request)

    def on_field_report(self, report: FieldReport) -> None:
        """An outcome decided outside the policy (rollback, crashed kernel, a germination Narset dropped)."""
        self.policy.observe_outcomes([report])

    # ------------------------------------------------------------------------------------------ the cycle

    def on_packet(self, packet: SystemStatePacket) -> list[Outgoing]:
        """Run one cycle; returns the messages to publish, in order.

        A packet carrying ``controller_state`` restores it first (a rollback or a resume in the trainer). A
        packet past the first epoch of a run this controller holds no state for (Tamiyo restarted) gets a
        ``controller_state_required`` answer and no decision: the trainer resends it with the checkpointed state.
        """
        epoch = packet.epoch
        if packet.controller_state is not None:
            self.load_state_dict(packet.controller_state)
        elif epoch > 1 and (self._last_epoch is None or self.run_id != packet.run_id):
            return [Outgoing(Topic.ADAPTATION_SIGNALS, AdaptationSignal(
                epoch=epoch, controller_state_required=True,
                reason=f"Tamiyo holds no state for run {packet.run_id} before epoch {epoch}: resend with "
                       f"controller_state"), packet.run_id)]
        self.run_id = packet.run_id
        # One pass over the seeds (10k seeds must cost milliseconds): per-layer counts, stage counts, live ones.
        counts: dict[str, int] = {}
        stages: dict[SeedStage, int] = {}
        live: list[tuple[str, str]] = []
        for t in packet.seeds:
            counts[t.layer_id] = counts.get(t.layer_id, 0) + 1
            stage = t.stage
            stages[stage] = stages.get(stage, 0) + 1
            if stage in ACTIVE_STAGES:
                live.append((t.layer_id, t.blueprint_id or ""))
        if packet.seeds_per_region:  # a summary packet: its seeds are a sample, the counts are complete
            counts = dict(packet.seeds_per_region)
        for layer_id, n in counts.items():
            self.regions[layer_id] = Region(layer_id, self.domains.domain_of(layer_id), n)
        out: list[Outgoing] = []

        clean = self._last_epoch is not None and epoch == self._last_epoch + 1
        self._last_epoch = epoch
        domain_names = sorted({r.domain_id for r in self.regions.values()})
        criticality = self.economy.prime.criticality(domain_names)
        patterns = {d: self.domains.domains[d].module_paths for d in domain_names if d in self.domains.domains}
        zones = self.zones.observe_volatility(epoch, {d: c.volatility for d, c in criticality.items()}, patterns)
        zones += self.zones.observe_boundary(epoch, live, clean)
        zones += self._follow_scaffolds(packet, clean)

        books = self.economy.mint(epoch, list(self.regions.values()), self.update.risk_posture,
                                  self.update.resource_budget)
        scaffold_zones, scaffold_commands = self._grant_scaffolds(books, packet)
        zones += scaffold_zones
        decisions = self.economy.settle_proposals(books, list(self._proposals.values()), self.regions,
                                                  protected=self._policy_protected)
        self.tally.minted_atp += from_micro(books.pool)
        for decision in decisions:
            result = "funded" if decision.approved else "unfunded" if decision.proposal_id in books.unfunded \
                else "refused"
            self._remember(self._proposals.pop(decision.proposal_id), decision, result)
        self.books = books
        allocations = books.commands(list(self.regions.values()))
        self._record("allocation", epoch, {
            "regions": len(self.regions), "posture": self.update.risk_posture,
            "resource_budget": self.update.resource_budget,
            "criticality": {d: round(c.score, 6) for d, c in books.criticality.items()},
        }, books.summary())

        if isinstance(self.policy, PolicyBase):
            self.policy.zones = [*self.steward.zones(), *self.zones.active()]
            self.policy.hands_off = self.steward.scaffold_seeds()
        signal = self._decide(packet)
        if scaffold_commands:
            signal = signal.model_copy(update={"commands": [*scaffold_commands, *signal.commands],
                                               "optimizer_rebuild_required": True})
        self.tally.commands.update(c.command.value for c in signal.commands)
        self.packet = packet
        self._record("adaptation", epoch, _packet_inputs(packet, stages), {
            "commands": [c.model_dump(mode="json", include={"layer_id", "seed_index", "command", "target_stage",
                                                             "kernel_artifact_id", "reason"}) for c in signal.commands],
            "reason": signal.reason,
        })

        out += [Outgoing(Topic.PROTECTED_ZONES, z, z.zone_id) for z in zones]
        out += [Outgoing(Topic.PROPOSAL_DECISIONS, d, d.region_id) for d in decisions]
        out += [Outgoing(Topic.BUDGET_ALLOCATIONS, a, a.region_id) for a in allocations]
        signal = signal.model_copy(update={"controller_state": self.state_dict()})
        out.append(Outgoing(Topic.ADAPTATION_SIGNALS, signal, packet.run_id))
        out += [Outgoing(Topic.FIELD_REPORTS, r, r.seed_id) for r in self.policy.drain_field_reports()]
        return out

    def state_dict(self) -> dict[str, Any]:
        """What a run's decisions continue from, as JSON: the policy, the last epoch decided, answered proposals.

        Budgets are minted afresh every cycle and protected zones re-derived from the packets, so they are
        not part of it.
        """
        return {"version": 1, "run_id": self.run_id, "last_epoch": self._last_epoch,
                "policy": self.policy.state_dict(),
                "answered": {pid: d.model_dump(mode="json") for pid, d in self._answered.items()},
                "scaffolds": self.steward.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s output (sent back by the trainer)."""
        if state.get("version") != 1:
            raise ValueError(f"Tamiyo state version {state.get('version')!r} is not 1")
        self.run_id = state["run_id"]
        self._last_epoch = state["last_epoch"]
        self.policy.load_state_dict(state["policy"])
        self._answered = {pid: ProposalDecision.model_validate(d) for pid, d in state["answered"].items()}
        if "scaffolds" in state:
            self.steward.load_state_dict(state["scaffolds"])

    def _decide(self, packet: SystemStatePacket) -> AdaptationSignal:
        """The policy's answer; when the kernel source is down, "wait" with the reason (and no half-made decision)."""
        before = self.policy.state_dict()
        try:
            return self.policy.decide(packet)
        except KernelsUnavailable as exc:
            self.policy.load_state_dict(before)
            self.kernel_source_failures += 1
            log.warning("no decision at epoch %d: %s", packet.epoch, exc)
            return AdaptationSignal(epoch=packet.epoch, reason=f"waiting: {exc}"[:2000])

    def _grant_scaffolds(self, books: Cycle, packet: SystemStatePacket) -> tuple[list[Any], list[
            KasminaControlCommand]]:
        """Answer the queued scaffold requests through the steward: zones to publish, GERMINATEs to send."""
        epoch = packet.epoch
        zones: list[Any] = []
        commands: list[KasminaControlCommand] = []
        if not self._scaffolds:
            return zones, commands
        dormant: dict[str, list[int]] = {}
        interfaces = {}
        for t in packet.seeds:
            if t.stage is SeedStage.DORMANT and t.interface is not None:
                dormant.setdefault(t.layer_id, []).append(t.seed_index)
                interfaces[t.layer_id, t.seed_index] = t.interface

        def find_kernel(layer_id: str, index: int, blueprint: str) -> str | None:
            query = KernelQuery(interface=interfaces[layer_id, index], tags_required=[blueprint],
                                hardware=packet.hardware, limit=1)
            try:
                found = self.kernels.query(query).artifacts
            except KernelsUnavailable as exc:
                log.warning("no scaffold kernel at epoch %d: %s", epoch, exc)
                return None
            return found[0].artifact_id if found else None

        for request in self._scaffolds:
            verdict = self.steward.consider(request, epoch, list(self.regions), dormant, find_kernel)
            granted = 0
            if verdict.accepted and verdict.command is not None:
                commands.append(verdict.command)
                dormant[request.region_id].remove(verdict.command.seed_index)
                if verdict.zone is not None:
                    zones.append(verdict.zone)
                if request.emergency:
                    tranche = from_micro(books.emergency_pool) * self.options.emergency_tranche_fraction
                    granted = self.economy.grant_emergency(books, request.region_id, tranche)
            self._record("scaffold", epoch, request.model_dump(mode="json"), {
                "accepted": verdict.accepted, "reason": verdict.reason, "energy_granted": verdict.granted,
                "zone": verdict.zone.zone_id if verdict.zone is not None else None,
                "seed": verdict.command.seed_id if verdict.command is not None else None,
                "emergency_atp": from_micro(granted), "emergency_left": self.steward.emergency_left})
        self._scaffolds = []
        return zones, commands

    def _follow_scaffolds(self, packet: SystemStatePacket, clean: bool) -> list[Any]:
        """Sunsets (weaned or out of time, energy refunded), escalations, and zones lifted after a clean checkpoint."""
        stages: dict[str, SeedStage] = {str(t.seed_id): t.stage for t in packet.seeds}
        report = self.steward.observe(packet.epoch, stages, clean)
        for s in report.sunsets:
            self._record("scaffold", packet.epoch, {"request_id": s.request.request_id, "region_id": s.layer_id},
                         {"sunset": s.outcome, "refunded": s.refunded, "emergency_left": self.steward.emergency_left})
        for region in report.escalations:
            self.escalations.append({"region_id": region, "epoch": packet.epoch,
                                     "reason": "scaffold TTL expired before it was weaned"})
            log.warning("scaffold in %s ran out of time at epoch %d: escalated", region, packet.epoch)
        return list(report.zones)

    def _policy_protected(self, region_id: str) -> bool:
        return any(fnmatch.fnmatchcase(region_id, p) for p in self.update.protected_regions)

    def _remember(self, proposal: StrategicOpportunityProposal, decision: ProposalDecision, result: str) -> None:
        """Keep the answer for redeliveries, count it as ``result`` (see tally.PROPOSAL_RESULTS), record it."""
        self.tally.proposals[result] += 1
        self.tally.granted_atp += decision.granted
        self._answered[proposal.proposal_id] = decision
        if len(self._answered) > 10 * self.options.history:
            self._answered.pop(next(iter(self._answered)))
        self._record("proposal", proposal.epoch, proposal.model_dump(mode="json"), decision.model_dump(mode="json"))

    def _record(self, kind: str, epoch: int, inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
        self.tally.decisions[kind] += 1
        self.decisions.append(DecisionRecord(kind, epoch, inputs, outputs))

    # ------------------------------------------------------------------------------------------ policy updates

    def apply_policy_update(self, update: PolicyUpdate) -> dict[str, Any]:
        """Check an update's ranges, rebuild the policy with it (keeping the policy's state) and say what changed."""
        problems = []
        if update.resource_budget > MAX_RESOURCE_BUDGET:
            problems.append(f"resource_budget {update.resource_budget} exceeds the maximum {MAX_RESOURCE_BUDGET}")
        if update.resource_budget == 0:
            problems.append("resource_budget 0 would mint no budget at all; use risk_posture 'conservative'")
        if update.max_concurrent_adaptations > MAX_CONCURRENT_ADAPTATIONS:
            problems.append(f"max_concurrent_adaptations {update.max_concurrent_adaptations} exceeds "
                            f"{MAX_CONCURRENT_ADAPTATIONS}")
        thresholds = update.risk_thresholds
        for name in ("plateau_patience_epochs", "embargo_epochs"):
            value = getattr(thresholds, name)
            if value > MAX_EPOCH_SETTING:
                problems.append(f"risk_thresholds.{name} {value} exceeds {MAX_EPOCH_SETTING} epochs")
        if thresholds.cull_regression_tolerance > 1.0:
            problems.append(f"risk_thresholds.cull_regression_tolerance {thresholds.cull_regression_tolerance} "
                            "exceeds 1.0 (the metric is an accuracy or a loss difference)")
        if problems:
            raise PolicyUpdateError("; ".join(problems))
        if update.policy_version < self.update.policy_version:
            raise StalePolicyError(f"policy_version {update.policy_version} is older than the active version "
                                   f"{self.update.policy_version}")
        network = self._learned_network(update) if update.learned_policy is not None else self.network
        config = self.base_config.model_copy(update={
            "plateau_patience_epochs": thresholds.plateau_patience_epochs,
            "plateau_min_delta": thresholds.plateau_min_delta,
            "cull_regression_tolerance": thresholds.cull_regression_tolerance,
            "embargo_epochs": thresholds.embargo_epochs,
            "max_concurrent_adaptations": update.max_concurrent_adaptations,
            "protected_regions": sorted(set(self.base_config.protected_regions) | set(update.protected_regions)),
        })
        state = self.policy.state_dict()
        policy: ControlPolicy
        if network is not None:
            policy = LearnedPolicy(config.model_copy(update={"policy": "learned"}), self.kernels, network=network)
        else:
            policy = self.policy_factory(config, self.kernels)
        policy.load_state_dict(state)
        self.policy, self.update, self.network = policy, update, network
        self.kernels.max_risk = thresholds.max_kernel_risk
        epoch = self.packet.epoch if self.packet is not None else 0
        self._record("policy", epoch, update.model_dump(mode="json"), {"applied": True})
        return self.policy_view()

    def _learned_network(self, update: PolicyUpdate) -> PolicyNetwork:
        """Fetch, verify and load the learned policy an update names; PolicyUpdateError says why it cannot be served."""
        ref = update.learned_policy
        assert ref is not None
        if self.policy_fetcher is None:
            raise PolicyUpdateError(f"learned policy {ref.version}: this Tamiyo has no Urza to fetch policies from")
        try:
            artifact, _ = self.policy_fetcher(ref.version)
        except Exception as exc:  # unreachable, 404, not JSON: all mean "cannot serve it", with the cause
            raise PolicyUpdateError(f"learned policy {ref.version} could not be fetched: {exc}") from exc
        digest = artifact_sha256(artifact)
        if digest != ref.sha256:
            raise PolicyUpdateError(f"learned policy {ref.version}: sha256 {digest} does not match the update's "
                                    f"{ref.sha256}")
        try:
            network = load_artifact(artifact)
        except PolicyArtifactError as exc:
            raise PolicyUpdateError(f"learned policy {ref.version} refused: {exc}") from exc
        if network.version != ref.version:
            raise PolicyUpdateError(f"learned policy {ref.version}: the artifact is version {network.version}")
        return network

    # ------------------------------------------------------------------------------------------ views

    def policy_view(self) -> dict[str, Any]:
        """The policy update in force."""
        return self.update.model_dump(mode="json")

    def status(self) -> dict[str, Any]:
        """Run status for ``GET /api/v1/system/status``."""
        p = self.packet
        active = sorted(t.seed_id for t in p.seeds if t.stage in ACTIVE_STAGES) if p is not None else []
        return {
            "status": "TRAINING" if p is not None else "IDLE",
            "run_id": p.run_id if p is not None else None,
            "current_epoch": p.epoch if p is not None else None,
            "validation_accuracy": p.val_accuracy if p is not None else None,
            "validation_loss": p.val_loss if p is not None else None,
            "active_adaptations": len(active),
            "active_seed_ids": active,
            "regions": len(self.regions),
            "risk_posture": self.update.risk_posture,
            "policy_version": self.update.policy_version,
            "policy": self.policy_stats(),
        }

    def policy_stats(self) -> dict[str, Any]:
        """Which policy decides, and a learned one's veto and invalid-action counts."""
        stats = getattr(self.policy, "stats", None)
        if callable(stats):
            found: dict[str, Any] = stats()
            return found
        return {"policy": self.base_config.policy}

    def seeds(self, stage: SeedStage | None, region: str | None, page: int, page_size: int) -> dict[str, Any]:
        """One page of the latest packet's seeds, filtered by stage and region (glob)."""
        seeds: list[SeedTelemetry] = list(self.packet.seeds) if self.packet is not None else []
        if stage is not None:
            seeds = [t for t in seeds if t.stage is stage]
        if region is not None:
            seeds = [t for t in seeds if fnmatch.fnmatchcase(t.layer_id, region)]
        start = (page - 1) * page_size
        items = [{"seed_id": t.seed_id, "region_id": t.layer_id, "domain_id": self.domains.domain_of(t.layer_id),
                  **t.model_dump(mode="json", exclude={"interface"})} for t in seeds[start:start + page_size]]
        return {"total": len(seeds), "page": page, "page_size": page_size, "items": items}

    def budgets(self) -> dict[str, Any]:
        """The current cycle's books, the zones in force and the proposals waiting."""
        return {
            "cycle": self.books.summary() if self.books is not None else None,
            "atp_global_budget": self.domains.tamiyo_prime.atp_global_budget,
            "protected_zones": [z.model_dump(mode="json") for z in [*self.steward.zones(), *self.zones.active()]],
            "scaffold_emergency_left": self.steward.emergency_left,
            "scaffold_escalations": self.escalations[-10:],
            "recently_lifted_zones": [z.model_dump(mode="json") for z in self.zones.recently_lifted()[-10:]],
            "pending_proposals": sorted(self._proposals),
            "health_summaries_received": self.summaries_received,
        }

    def recent_decisions(self, limit: int, kind: str | None) -> list[dict[str, Any]]:
        """The newest ``limit`` decisions (optionally of one kind) with their inputs."""
        chosen = [d for d in reversed(self.decisions) if kind is None or d.kind == kind][:limit]
        return [{"kind": d.kind, "epoch": d.epoch, "at": d.at, "inputs": d.inputs, "outputs": d.outputs}
                for d in chosen]


def _packet_inputs(packet: SystemStatePacket, stages: dict[SeedStage, int]) -> dict[str, Any]:
    """What of a packet drives a decision, without the per-seed detail."""
    return {"run_id": packet.run_id, "epoch": packet.epoch, "train_loss": packet.train_loss,
            "val_loss": packet.val_loss, "val_accuracy": packet.val_accuracy, "seeds": len(packet.seeds),
            "stages": {stage.value: n for stage, n in stages.items()}}
