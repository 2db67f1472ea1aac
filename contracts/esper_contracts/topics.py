"""The topic catalogue: the one place that says which payload travels on which topic.

A developer who wants to know who speaks what reads this file. Oona refuses to publish a payload on a
topic whose catalogue entry names another model, and validates every arriving message against it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from .blueprints import CompilationJob, CompiledKernelArtifact, UrabraskValidationReport, ValidationJob
from .control import (
    AllocationCommand,
    HealthSummaryReport,
    NarsetAllocationDecision,
    PolicyUpdate,
    ProposalDecision,
    ProtectedZone,
    ScaffoldRequest,
    StrategicOpportunityProposal,
)
from .lifecycle import AdaptationSignal, FieldReport, SeedTelemetry, SystemStatePacket
from .pruning import ImportanceReport, ImportanceRequest, PruningOutcome, PruningPlan


class Topic:
    """Every topic's name, written once: code publishes and subscribes with these constants, not literals.

    tests/test_topic_catalogue.py reads the source for them to check that the catalogue below names
    exactly who publishes and who subscribes each topic.
    """

    ADAPTATION_SIGNALS = "control.adaptation.signals"
    SEED_HEALTH = "telemetry.seed.health"
    SYSTEM_STATE = "telemetry.system.state"
    HEALTH_SUMMARIES = "telemetry.health.summaries"
    NARSET_ALLOCATIONS = "telemetry.narset.allocations"
    FIELD_REPORTS = "innovation.field_reports"
    COMPILATION_JOBS = "compilation.jobs"
    COMPILATION_RESULTS = "compilation.results"
    VALIDATION_JOBS = "validation.jobs"
    VALIDATION_REPORTS = "validation.reports"
    POLICY_UPDATES = "control.policy.updates"
    BUDGET_ALLOCATIONS = "control.budget.allocations"
    PROPOSALS = "control.proposals"
    PROPOSAL_DECISIONS = "control.proposals.decisions"
    SCAFFOLD_REQUESTS = "control.scaffold.requests"
    PROTECTED_ZONES = "control.protected_zones"
    IMPORTANCE_REQUESTS = "analysis.importance.requests"
    IMPORTANCE = "analysis.importance"
    PRUNING_PLANS = "pruning.plans"
    PRUNING_OUTCOMES = "pruning.outcomes"


@dataclass(frozen=True)
class TopicSpec:
    """One topic: its name, payload model, who produces and consumes it, and whether order per key matters.

    ``planned`` names producers or consumers that do not speak on the topic yet, because the open issue that
    builds them has not landed (see tests/test_topic_catalogue.py for which ones may be planned); a planned
    name is planned in every role it has on the topic. Everyone else really publishes or subscribes it.
    """

    name: str
    payload: type[BaseModel]
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    ordered_by_key: bool = False
    description: str = ""
    planned: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = set(self.planned) - set(self.producers) - set(self.consumers)
        if unknown:
            raise ValueError(f"{self.name}: planned {sorted(unknown)} are neither producers nor consumers")

    def label(self, service: str) -> str:
        """``service`` as the catalogue prints it: ``"karn (planned)"`` until it speaks on this topic."""
        return f"{service} (planned)" if service in self.planned else service


# Services in the trainer process: NarsetHost (narset-worker) is Tolaria's controller and speaks for it on
# the bus; Kasmina takes its commands in process, inside the AdaptationSignal, so they have no topic.
_SPECS = [
    TopicSpec(Topic.ADAPTATION_SIGNALS, AdaptationSignal, ("tamiyo",), ("narset-worker",), ordered_by_key=True,
              description="Answer to each SystemStatePacket (its commands included), keyed by run"),
    TopicSpec(Topic.SEED_HEALTH, SeedTelemetry, ("kasmina",), ("nissa",), planned=("kasmina", "nissa"),
              description="Per-seed health at each epoch end, for Nissa (the packet carries it to Tamiyo and Nissa "
                          "today; SeedTelemetry names no run, so Nissa could not yet tell the runs apart on it)"),
    TopicSpec(Topic.SYSTEM_STATE, SystemStatePacket, ("narset-worker",), ("tamiyo", "nissa"), ordered_by_key=True,
              description="Epoch-boundary heartbeat from the trainer, keyed by run"),
    TopicSpec(Topic.HEALTH_SUMMARIES, HealthSummaryReport, ("narset-worker", "narset-coordinator"),
              ("tamiyo", "nissa"), description="Region/domain health (workers report to the coordinator over REST)"),
    TopicSpec(Topic.NARSET_ALLOCATIONS, NarsetAllocationDecision, ("narset-worker",), ("nissa", "emrakul"),
              ordered_by_key=True,
              description="Every allocator decision with its inputs, for replay (Emrakul reads x_E from it)"),
    TopicSpec(Topic.FIELD_REPORTS, FieldReport, ("tamiyo", "narset-worker", "recipes"),
              ("urza", "tamiyo", "narset-worker", "karn", "nissa", "simic"), planned=("simic",),
              description="Real-world outcome of each adaptation (recipes: make evolve relays its in-process "
                          "Tamiyo's reports)"),
    TopicSpec(Topic.COMPILATION_JOBS, CompilationJob, ("urza",), ("tezzeret",),
              description="Blueprint x pipeline x shape to compile"),
    TopicSpec(Topic.COMPILATION_RESULTS, CompiledKernelArtifact, ("tezzeret",), ("urza",),
              description="Compiled (or failed) artifacts"),
    TopicSpec(Topic.VALIDATION_JOBS, ValidationJob, ("urza",), ("urabrask",),
              description="Artifacts to benchmark and characterise"),
    TopicSpec(Topic.VALIDATION_REPORTS, UrabraskValidationReport, ("urabrask",), ("urza", "karn"),
              description="Measured profile and tags of an artifact"),
    TopicSpec(Topic.POLICY_UPDATES, PolicyUpdate, ("simic",), ("tamiyo",),
              description="Tamiyo's risk posture and thresholds (operators use POST /api/v1/policy)"),
    TopicSpec(Topic.BUDGET_ALLOCATIONS, AllocationCommand, ("tamiyo",), ("narset-coordinator", "narset-worker"),
              ordered_by_key=True, description="Per-region budget grants each cycle"),
    TopicSpec(Topic.PROPOSALS, StrategicOpportunityProposal, ("narset-worker",), ("tamiyo",),
              description="Requests for budget beyond the allocation"),
    TopicSpec(Topic.PROPOSAL_DECISIONS, ProposalDecision, ("tamiyo",), ("narset-worker",),
              description="Tamiyo's answer to every proposal"),
    TopicSpec(Topic.SCAFFOLD_REQUESTS, ScaffoldRequest, ("narset-worker",), ("tamiyo",),
              description="Temporary scaffold placements"),
    TopicSpec(Topic.PROTECTED_ZONES, ProtectedZone, ("tamiyo",), ("emrakul", "elesh", "narset-worker"),
              description="Zones no pruning or adaptation may touch"),
    # Removal (decision 0013): Tolaria asks, Elesh scores, Emrakul plans within x_E and outside zones, Tolaria cuts.
    TopicSpec(Topic.IMPORTANCE_REQUESTS, ImportanceRequest, ("tolaria",), ("elesh",),
              description="A stored checkpoint (blob key) and the trainer's unit statistics, to score"),
    TopicSpec(Topic.IMPORTANCE, ImportanceReport, ("elesh",), ("emrakul",), ordered_by_key=True,
              description="Importance scores at checkpoints, keyed by run (zone members diagnostic-only)"),
    TopicSpec(Topic.PRUNING_PLANS, PruningPlan, ("emrakul",), ("tolaria",), ordered_by_key=True,
              description="Structured pruning plans (probe or lysis) to apply at a safe boundary, keyed by run"),
    TopicSpec(Topic.PRUNING_OUTCOMES, PruningOutcome, ("tolaria",), ("emrakul",), ordered_by_key=True,
              description="What each plan came to: rejected (and why), or applied with parameters, MACs, loss"),
]

#: topic name -> spec
TOPICS: dict[str, TopicSpec] = {spec.name: spec for spec in _SPECS}


class UnknownTopicError(KeyError):
    """Raised for a topic name that is not in the catalogue."""

    def __str__(self) -> str:
        return f"unknown topic {self.args[0]!r}; known topics: {', '.join(sorted(TOPICS))}"


def topic_spec(name: str) -> TopicSpec:
    """The catalogue entry for ``name``; raises UnknownTopicError with the known names."""
    try:
        return TOPICS[name]
    except KeyError:
        raise UnknownTopicError(name) from None


def payload_model(name: str) -> type[BaseModel]:
    """The payload model carried on topic ``name``."""
    return topic_spec(name).payload


def dead_letter_topic(name: str) -> str:
    """The dead-letter topic for ``name``: messages that fail validation or exhaust redeliveries land there."""
    return f"{name}.dlq"
