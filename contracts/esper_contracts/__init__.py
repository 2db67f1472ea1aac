"""Leyline: the contracts of the Esper platform.

Every message, record and enum the services exchange is a strict Pydantic v2 model defined here.
This package depends on pydantic alone; it is the only vocabulary services share.
"""

from .base import StrictModel, new_id, utc_now
from .blueprints import (
    ARTIFACT_ID_PATTERN,
    MAX_IR_NODES,
    MAX_IR_PARAMETERS,
    BlueprintIR,
    BlueprintRecord,
    CompilationJob,
    CompiledKernelArtifact,
    IREdge,
    IRNode,
    KernelQuery,
    KernelQueryResult,
    OpType,
    ScaffoldSunset,
    TensorInterface,
    UrabraskValidationReport,
    ValidationJob,
    artifact_id,
)
from .control import (
    AllocationCommand,
    AllocatorInputs,
    AlphaSchedule,
    HealthSummaryReport,
    ImportanceReport,
    ImportanceScore,
    NarsetAllocationDecision,
    PolicyUpdate,
    ProposalDecision,
    ProtectedZone,
    PruneAction,
    PruningPlan,
    RiskThresholds,
    ScaffoldRequest,
    StrategicOpportunityProposal,
)
from .enums import (
    BlueprintClass,
    CommandType,
    CompilationPipeline,
    ControlMode,
    GraftingStrategy,
    KernelStatus,
    Outcome,
    PruneGranularity,
    SeedStage,
)
from .envelope import SCHEMA_VERSION, Envelope
from .lifecycle import (
    ACTIVE_STAGES,
    LEGAL_TRANSITIONS,
    TRAINABLE_ONLY_STAGES,
    AdaptationSignal,
    FieldReport,
    KasminaControlCommand,
    SeedTelemetry,
    SystemStatePacket,
    is_legal_transition,
)
from .topics import TOPICS, TopicSpec, UnknownTopicError, dead_letter_topic, payload_model, topic_spec

#: Every contract model, for schema export and conformance tests.
ALL_MODELS = (
    KasminaControlCommand, SeedTelemetry, SystemStatePacket, AdaptationSignal, FieldReport,
    BlueprintIR, BlueprintRecord, CompiledKernelArtifact, KernelQuery, KernelQueryResult,
    UrabraskValidationReport, CompilationJob, ValidationJob, PolicyUpdate, AllocationCommand,
    HealthSummaryReport, StrategicOpportunityProposal, ProposalDecision, ScaffoldRequest, ProtectedZone,
    NarsetAllocationDecision, ImportanceReport, PruningPlan,
)

__all__ = [
    "ACTIVE_STAGES", "ALL_MODELS", "ARTIFACT_ID_PATTERN", "LEGAL_TRANSITIONS", "MAX_IR_NODES",
    "MAX_IR_PARAMETERS", "SCHEMA_VERSION", "TOPICS", "TRAINABLE_ONLY_STAGES", "AdaptationSignal",
    "AllocationCommand", "AllocatorInputs", "AlphaSchedule", "BlueprintClass", "BlueprintIR",
    "BlueprintRecord", "CommandType", "CompilationJob", "CompilationPipeline", "CompiledKernelArtifact",
    "ControlMode", "Envelope", "FieldReport", "GraftingStrategy", "HealthSummaryReport", "IREdge", "IRNode",
    "ImportanceReport", "ImportanceScore", "KasminaControlCommand", "KernelQuery", "KernelQueryResult",
    "KernelStatus", "NarsetAllocationDecision", "OpType", "Outcome", "PolicyUpdate", "ProposalDecision",
    "ProtectedZone", "PruneAction", "PruneGranularity", "PruningPlan", "RiskThresholds", "ScaffoldRequest",
    "ScaffoldSunset", "SeedStage", "SeedTelemetry", "StrategicOpportunityProposal", "StrictModel",
    "SystemStatePacket", "TensorInterface", "TopicSpec", "UnknownTopicError", "UrabraskValidationReport",
    "ValidationJob", "artifact_id", "dead_letter_topic", "is_legal_transition", "new_id", "payload_model",
    "topic_spec", "utc_now",
]
