"""Removal contracts: what Elesh is asked and answers, what Emrakul plans, and what Tolaria's cut came to.

The loop, at checkpoint boundaries: the trainer (Tolaria) stores a checkpoint in the blob store and asks Elesh
for importance (:class:`ImportanceRequest` on ``analysis.importance.requests``); Elesh answers with an
:class:`ImportanceReport` on ``analysis.importance``; Emrakul turns reports, protected zones and its allowance
(Narset's ``x_E``) into a :class:`PruningPlan` on ``pruning.plans``; Tolaria applies or rejects it and reports a
:class:`PruningOutcome` on ``pruning.outcomes``.
"""

from __future__ import annotations

from typing import Literal, Self

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
from .enums import ImportanceCriterion, PruneGranularity, PruneMode

#: The kinds of module Elesh knows how to score from a state dict alone.
ModuleKind = Literal["linear", "conv", "attention", "seed"]


class PrunableModule(StrictModel):
    """One module of the host whose units may be scored (and cut): where its tensors are and what they are."""

    module_path: Identifier
    kind: ModuleKind
    #: attention only: heads of ``in_proj_weight`` (q, k, v stacked) and of the output projection
    num_heads: PositiveInt | None = None
    #: the BatchNorm that normalises this module's output, if any (its |gamma| is the BN_SCALE criterion)
    batchnorm_path: Identifier | None = None
    #: parameters one unit takes with it, coupled tensors included (the next layer's inputs, a BatchNorm),
    #: as the trainer's dependency graph counts them; Elesh falls back to the unit's own weights without it
    unit_parameters: PositiveInt | None = None

    @model_validator(mode="after")
    def _heads_for_attention(self) -> Self:
        if (self.kind == "attention") != (self.num_heads is not None):
            raise ValueError("num_heads is required for attention modules and only for them")
        return self


class UnitStatistics(StrictModel):
    """Per-unit statistics the trainer gathered on training data (the data-aware criteria), for one module."""

    module_path: Identifier
    criterion: Literal[ImportanceCriterion.TAYLOR, ImportanceCriterion.ACTIVATION]
    values: list[NonNegativeFloat] = Field(min_length=1, max_length=1_000_000)


class ImportanceRequest(StrictModel):
    """Tolaria asks Elesh to score a stored checkpoint (a job: ``job_id`` stays the same across redeliveries).

    ``checkpoint_key`` names a safetensors state dict in the blob store; Elesh never unpickles what it reads.
    """

    job_id: Identifier = Field(default_factory=new_id)
    run_id: Identifier
    region_id: Identifier = "host"
    epoch: NonNegativeInt
    checkpoint_id: Identifier = Field(description="the model version scored: plans made from it carry it")
    checkpoint_key: Identifier = Field(description="blob store key of the safetensors state dict")
    modules: list[PrunableModule] = Field(min_length=1, max_length=10_000)
    statistics: list[UnitStatistics] = Field(default_factory=list, max_length=10_000)


class ImportanceScore(StrictModel):
    """Importance of one prunable unit of the host model under one criterion (normalised to mean 1 per module)."""

    module_path: Identifier
    granularity: PruneGranularity
    index: NonNegativeInt = 0
    score: NonNegativeFloat
    criterion: ImportanceCriterion = ImportanceCriterion.MAGNITUDE
    #: parameters removed with the unit (its own weights; coupled layers remove more)
    parameters: NonNegativeInt = 0
    #: inside a protected zone (or its ring) when scored: reported for diagnosis, never to be planned on
    diagnostic_only: bool = False


class ImportanceReport(StrictModel):
    """Elesh's importance scores for the host model at one checkpoint."""

    report_id: Identifier = Field(default_factory=new_id)
    request_id: Identifier | None = None
    run_id: Identifier = "run"
    region_id: Identifier = "host"
    epoch: NonNegativeInt
    checkpoint_id: Identifier
    #: the criterion plans rank by: data-aware when the request carried statistics, data-free otherwise
    primary: ImportanceCriterion = ImportanceCriterion.MAGNITUDE
    total_parameters: NonNegativeInt = 0
    scores: list[ImportanceScore] = Field(default_factory=list)


class PruneAction(StrictModel):
    """Remove (or, in a probe, mask) units of one module."""

    module_path: Identifier
    granularity: PruneGranularity
    indices: list[NonNegativeInt] = Field(min_length=1)


class PruningPlan(StrictModel):
    """Emrakul's structured pruning plan, within its allowance and outside protected zones and their rings."""

    plan_id: Identifier = Field(default_factory=new_id)
    run_id: Identifier = "run"
    region_id: Identifier = "host"
    epoch: NonNegativeInt
    importance_report_id: Identifier
    #: the checkpoint the scores were computed on; Tolaria refuses a plan older than the model's last change
    checkpoint_id: Identifier = "unknown"
    mode: PruneMode = PruneMode.PROBE
    #: Emrakul's intensity x_E for the region when it planned
    intensity: NonNegativeFloat = 0.0
    #: the most parameters the plan may remove, as a fraction of the model's parameters
    allowance: UnitInterval = 0.0
    #: the fraction of the model's parameters the plan's actions name (never above ``allowance``)
    allowance_used: UnitInterval = 0.0
    actions: list[PruneAction] = Field(default_factory=list)
    estimated_parameter_reduction: NonNegativeInt = 0
    requires_safe_boundary: bool = True
    #: a probe's window: epochs the units stay masked before the loss change is judged
    probe_epochs: PositiveInt = 1

    @model_validator(mode="after")
    def _within_allowance(self) -> Self:
        if self.allowance_used > self.allowance + 1e-9:
            raise ValueError(f"allowance_used {self.allowance_used:.6g} exceeds the allowance {self.allowance:.6g}")
        return self


class PruningOutcome(StrictModel):
    """What Tolaria did with one plan: applied (and kept, or rolled back) or rejected, with the figures."""

    plan_id: Identifier
    run_id: Identifier = "run"
    region_id: Identifier = "host"
    epoch: NonNegativeInt
    mode: PruneMode
    accepted: bool
    #: why a plan was rejected or rolled back; what was done otherwise
    reason: Text = Field(min_length=1, max_length=2000)
    rolled_back: bool = False
    parameters_before: NonNegativeInt = 0
    parameters_after: NonNegativeInt = 0
    macs_before: NonNegativeInt = 0
    macs_after: NonNegativeInt = 0
    loss_before: FiniteFloat | None = None
    loss_after: FiniteFloat | None = None
    units_removed: NonNegativeInt = 0

    @property
    def loss_change(self) -> float | None:
        """``loss_after - loss_before`` (None unless both were measured)."""
        if self.loss_before is None or self.loss_after is None:
            return None
        return self.loss_after - self.loss_before

    @model_validator(mode="after")
    def _rejection_changes_nothing(self) -> Self:
        if not self.accepted and self.parameters_after != self.parameters_before:
            raise ValueError("a rejected plan leaves the model untouched: parameters_after != parameters_before")
        return self
