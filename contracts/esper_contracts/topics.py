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
    ImportanceReport,
    NarsetAllocationDecision,
    PolicyUpdate,
    ProposalDecision,
    ProtectedZone,
    PruningPlan,
    ScaffoldRequest,
    StrategicOpportunityProposal,
)
from .lifecycle import AdaptationSignal, FieldReport, KasminaControlCommand, SeedTelemetry, SystemStatePacket


@dataclass(frozen=True)
class TopicSpec:
    """One topic: its name, payload model, who produces and consumes it, and whether order per key matters."""

    name: str
    payload: type[BaseModel]
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    ordered_by_key: bool = False
    description: str = ""


_SPECS = [
    TopicSpec("control.kasmina.commands", KasminaControlCommand, ("tamiyo",), ("kasmina", "narset-worker"),
              ordered_by_key=True, description="Lifecycle commands, keyed by layer to keep each layer's order"),
    TopicSpec("control.adaptation.signals", AdaptationSignal, ("tamiyo",), ("tolaria",),
              ordered_by_key=True, description="Answer to each SystemStatePacket, keyed by run"),
    TopicSpec("telemetry.seed.health", SeedTelemetry, ("kasmina",), ("narset-worker", "tamiyo", "nissa"),
              description="Per-seed health at each epoch end"),
    TopicSpec("telemetry.system.state", SystemStatePacket, ("tolaria",), ("tamiyo", "nissa"),
              ordered_by_key=True, description="Epoch-boundary heartbeat, keyed by run"),
    TopicSpec("telemetry.health.summaries", HealthSummaryReport, ("narset-worker", "narset-coordinator"),
              ("narset-coordinator", "tamiyo", "nissa"), description="Hierarchically aggregated region/domain health"),
    TopicSpec("telemetry.narset.allocations", NarsetAllocationDecision, ("narset-worker",), ("tamiyo", "nissa"),
              ordered_by_key=True, description="Every allocator decision with its inputs, for replay"),
    TopicSpec("innovation.field_reports", FieldReport, ("tamiyo",), ("karn", "urza", "simic"),
              description="Real-world outcome of each adaptation"),
    TopicSpec("compilation.jobs", CompilationJob, ("urza",), ("tezzeret",),
              description="Blueprint x pipeline x shape to compile"),
    TopicSpec("compilation.results", CompiledKernelArtifact, ("tezzeret",), ("urza",),
              description="Compiled (or failed) artifacts"),
    TopicSpec("validation.jobs", ValidationJob, ("urza", "tezzeret"), ("urabrask",),
              description="Artifacts to benchmark and characterise"),
    TopicSpec("validation.reports", UrabraskValidationReport, ("urabrask",), ("urza", "karn"),
              description="Measured profile and tags of an artifact"),
    TopicSpec("control.policy.updates", PolicyUpdate, ("simic", "operator"), ("tamiyo",),
              description="Tamiyo's risk posture and thresholds"),
    TopicSpec("control.budget.allocations", AllocationCommand, ("tamiyo",), ("narset-coordinator", "narset-worker"),
              ordered_by_key=True, description="Per-region budget grants each cycle"),
    TopicSpec("control.proposals", StrategicOpportunityProposal, ("narset-worker", "narset-coordinator"),
              ("tamiyo",), description="Requests for budget beyond the allocation"),
    TopicSpec("control.proposals.decisions", ProposalDecision, ("tamiyo",), ("narset-coordinator", "narset-worker"),
              description="Tamiyo's answer to every proposal"),
    TopicSpec("control.scaffold.requests", ScaffoldRequest, ("narset-worker", "tamiyo"), ("tamiyo",),
              description="Temporary scaffold placements"),
    TopicSpec("control.protected_zones", ProtectedZone, ("tamiyo",), ("emrakul", "narset-worker"),
              description="Zones no pruning or adaptation may touch"),
    TopicSpec("analysis.importance", ImportanceReport, ("elesh",), ("emrakul",),
              description="Importance scores at checkpoints"),
    TopicSpec("pruning.plans", PruningPlan, ("emrakul",), ("tolaria",),
              description="Structured pruning plans to apply with a rollback point"),
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
