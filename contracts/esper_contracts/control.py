"""Control-plane contracts: policy, budgets, opportunity proposals, scaffolds, Narset's allocations.

Removal (importance, plans, outcomes) is in :mod:`esper_contracts.pruning`.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Self

from pydantic import Field, model_validator

from .base import (
    FiniteFloat,
    Identifier,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    StrictModel,
    Text,
    UnitInterval,
    new_id,
)
from .enums import ControlMode, GraftingStrategy, SeedStage


class AlphaSchedule(StrictModel):
    """How GRAFTING ramps alpha from 0 to 1."""

    ramp_epochs: PositiveInt = 3
    strategy: GraftingStrategy = GraftingStrategy.LINEAR


class RiskThresholds(StrictModel):
    """Limits the controller enforces before and after an adaptation."""

    max_loss_spike_ratio: float = Field(default=2.0, gt=1.0, allow_inf_nan=False)
    max_kernel_risk: UnitInterval = 0.8
    plateau_patience_epochs: PositiveInt = 3
    plateau_min_delta: NonNegativeFloat = 1e-3
    cull_regression_tolerance: NonNegativeFloat = 0.02
    embargo_epochs: NonNegativeInt = 5


class PolicyArtifactRef(StrictModel):
    """A learned policy version stored in Urza (``GET /api/v1/policies/{version}``) and the digest it must have.

    The digest is sha256 of the artifact's canonical JSON (sorted keys, no spaces), so Tamiyo can tell a
    tampered or swapped artifact from the one Simic published.
    """

    version: Identifier = Field(max_length=128, description="As Urza stores it: letters, digits, . _ -")
    sha256: str = Field(min_length=64, max_length=64, pattern=r"^[0-9a-f]{64}$")


class PolicyUpdate(StrictModel):
    """A change to Tamiyo's posture: alpha schedule, resource budget, risk thresholds, protected regions.

    ``learned_policy`` (from Simic) switches Tamiyo to that learned policy version; a version Tamiyo cannot
    fetch, verify or serve is refused with the reason, and Tamiyo keeps the policy it had.
    """

    policy_version: PositiveInt = 1
    risk_posture: Identifier = Field(default="balanced", pattern=r"^(conservative|balanced|aggressive)$")
    alpha_schedule: AlphaSchedule = Field(default_factory=AlphaSchedule)
    resource_budget: NonNegativeFloat = 1.0
    max_concurrent_adaptations: PositiveInt = 1
    risk_thresholds: RiskThresholds = Field(default_factory=RiskThresholds)
    protected_regions: list[Identifier] = Field(default_factory=list)
    learned_policy: PolicyArtifactRef | None = None


class AllocationCommand(StrictModel):
    """Tamiyo's budget grant for one region (or domain) for one cycle."""

    cycle: NonNegativeInt
    region_id: Identifier
    domain_id: Identifier | None = None
    atp_budget: NonNegativeFloat
    energy_budget: NonNegativeFloat = 0.0
    valid_until_epoch: NonNegativeInt | None = None


class HealthSummaryReport(StrictModel):
    """Aggregated health of a region or domain over one telemetry window (constant size, whatever the seed count)."""

    region_id: Identifier
    domain_id: Identifier | None = None
    window: NonNegativeInt
    epoch: NonNegativeInt
    seed_count: NonNegativeInt
    active_seeds: NonNegativeInt = 0
    stage_counts: dict[SeedStage, NonNegativeInt] = Field(default_factory=dict)
    mean_gradient_norm: NonNegativeFloat = 0.0
    max_gradient_norm: NonNegativeFloat = 0.0
    mean_dead_node_ratio: UnitInterval = 0.0
    mean_activation_sparsity: UnitInterval = 0.0
    mean_chunk_variance: NonNegativeFloat = 0.0
    loss_trend: FiniteFloat = 0.0
    budget_spent: NonNegativeFloat = 0.0
    source_reports: NonNegativeInt = Field(default=0, description="How many lower-level reports were folded in")


class StrategicOpportunityProposal(StrictModel):
    """Narset's request for budget beyond its allocation: what, how, how much, expected return, what could go wrong."""

    proposal_id: Identifier = Field(default_factory=new_id)
    region_id: Identifier
    epoch: NonNegativeInt
    opportunity: Text = Field(min_length=1, max_length=2000)
    plan: list[Text] = Field(min_length=1, max_length=50)
    ask: float = Field(gt=0.0, allow_inf_nan=False)
    expected_roi: FiniteFloat
    mitigations: list[Text] = Field(default_factory=list, max_length=50)
    submitted_by: Identifier = "narset"


class ProposalDecision(StrictModel):
    """Tamiyo's answer to a StrategicOpportunityProposal; every proposal gets exactly one."""

    proposal_id: Identifier
    region_id: Identifier
    approved: bool
    granted: NonNegativeFloat = 0.0
    reason: Text = Field(min_length=1, max_length=2000)

    @model_validator(mode="after")
    def _grant_only_if_approved(self) -> Self:
        if not self.approved and self.granted > 0:
            raise ValueError("a rejected proposal cannot be granted budget")
        return self


class ScaffoldRequest(StrictModel):
    """A request to place a temporary scaffold blueprint in a region."""

    request_id: Identifier = Field(default_factory=new_id)
    region_id: Identifier
    blueprint_id: Identifier
    reason: Text = Field(min_length=1, max_length=2000)
    ttl_epochs: PositiveInt
    emergency: bool = False
    #: Emergency energy asked for (Tamiyo grants all of it or nothing).
    ask: float = Field(default=1.0, gt=0.0, allow_inf_nan=False)


class ProtectedZone(StrictModel):
    """Modules that pruning and other adaptations must not touch, with an embargo ring after a scaffold's sunset."""

    zone_id: Identifier = Field(default_factory=new_id)
    module_patterns: list[Identifier] = Field(min_length=1)
    reason: Text = Field(min_length=1, max_length=2000)
    scaffold_id: Identifier | None = None
    created_epoch: NonNegativeInt
    expires_after_epoch: NonNegativeInt | None = None
    # The embargo ring: neighbouring modules held with the zone (no germination, no pruning) while it lasts.
    ring_patterns: list[Identifier] = Field(default_factory=list)

    @model_validator(mode="after")
    def _expiry_after_creation(self) -> Self:
        if self.expires_after_epoch is not None and self.expires_after_epoch < self.created_epoch:
            raise ValueError("expires_after_epoch precedes created_epoch")
        return self

    def active(self, epoch: int) -> bool:
        """Whether the zone (and its ring) holds at ``epoch``: from creation through ``expires_after_epoch``."""
        return self.created_epoch <= epoch and (self.expires_after_epoch is None or epoch <= self.expires_after_epoch)

    def covers(self, module: str, epoch: int) -> bool:
        """Whether ``module`` (a dotted module path, or a seed id ``layer[i]``) is inside the zone or its ring.

        Patterns are shell-style globs (``blocks.1.*``) matched against the module path; a seed id is judged by
        its layer. The one rule every reader of zones (Narset, Tamiyo's policy, Emrakul) applies.
        """
        if not self.active(epoch):
            return False
        layer = module.rsplit("[", 1)[0] if module.endswith("]") else module
        return any(fnmatchcase(layer, p) for p in (*self.module_patterns, *self.ring_patterns))


class AllocatorInputs(StrictModel):
    """Per-region signals feeding Narset's allocator (raw or EWMA-smoothed)."""

    progress: FiniteFloat
    stability: FiniteFloat
    efficiency: FiniteFloat


class NarsetAllocationDecision(StrictModel):
    """One allocation decision by Narset, with the inputs that produced it, so a log can be replayed exactly."""

    decision_id: Identifier = Field(default_factory=new_id)
    region_id: Identifier
    window: NonNegativeInt
    mode: ControlMode
    x_T: NonNegativeFloat = Field(description="Tamiyo (growth) intensity")
    x_E: NonNegativeFloat = Field(description="Emrakul (pruning) intensity")
    c_T: NonNegativeFloat = Field(description="Cost of x_T under the convex overdrive curve")
    c_E: NonNegativeFloat = Field(description="Cost of x_E")
    pool: float = Field(gt=0.0, allow_inf_nan=False)
    total_spent: NonNegativeFloat
    overdrive_T: bool = False
    overdrive_E: bool = False
    raw_inputs: AllocatorInputs
    smoothed_inputs: AllocatorInputs

    @model_validator(mode="after")
    def _within_pool(self) -> Self:
        if self.c_T + self.c_E > self.pool * (1 + 1e-9):
            raise ValueError(f"c_T + c_E = {self.c_T + self.c_E:.6g} exceeds the pool {self.pool:.6g}")
        return self
