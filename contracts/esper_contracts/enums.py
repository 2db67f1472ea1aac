"""Enumerations shared across the platform."""

from __future__ import annotations

from enum import StrEnum


class SeedStage(StrEnum):
    """The stages of a seed's lifecycle (ARCHITECTURE.md §4)."""

    DORMANT = "DORMANT"
    GERMINATED = "GERMINATED"
    LOADING = "LOADING"
    TRAINING = "TRAINING"
    GRAFTING = "GRAFTING"
    STABILIZATION = "STABILIZATION"
    EVALUATING = "EVALUATING"
    FINE_TUNING = "FINE_TUNING"
    FOSSILIZED = "FOSSILIZED"
    CULLED = "CULLED"
    CANCELLED = "CANCELLED"
    ROLLED_BACK = "ROLLED_BACK"

    @property
    def code(self) -> int:
        """Stable small integer for this stage, used in Kasmina's state tensor."""
        return _STAGE_CODES[self]

    @classmethod
    def from_code(cls, code: int) -> SeedStage:
        """Inverse of :attr:`code`."""
        return _STAGES_BY_CODE[int(code)]


_STAGE_CODES = {stage: i for i, stage in enumerate(SeedStage)}
_STAGES_BY_CODE = dict(enumerate(SeedStage))


class CommandType(StrEnum):
    """What a KasminaControlCommand asks a seed to do."""

    GERMINATE = "GERMINATE"  # DORMANT -> GERMINATED with a named kernel
    ADVANCE = "ADVANCE"  # move to the command's target_stage (must be a legal transition)
    CULL = "CULL"  # -> CULLED (slot goes under embargo)
    CANCEL = "CANCEL"  # -> CANCELLED (before the host is affected)


class GraftingStrategy(StrEnum):
    """How the alpha ramp of GRAFTING progresses."""

    LINEAR = "LINEAR"
    COSINE = "COSINE"
    SIGMOID = "SIGMOID"


class CompilationPipeline(StrEnum):
    """Tezzeret's compilation pipelines, from quickest to most optimised."""

    EAGER = "eager"  # the IR interpreted as an eager nn.Module: no compilation (standalone, in-process)
    FAST = "fast"  # torch.export program
    STANDARD = "standard"  # AOTInductor package
    AGGRESSIVE = "aggressive"  # AOTInductor with max-autotune


class KernelStatus(StrEnum):
    """Status of one compiled kernel artifact."""

    PENDING = "PENDING"
    COMPILING = "COMPILING"
    COMPILED = "COMPILED"
    VALIDATING = "VALIDATING"
    VALIDATED = "VALIDATED"
    REJECTED = "REJECTED"
    FAILED = "FAILED"


class BlueprintClass(StrEnum):
    """Families of blueprints; SCAFFOLD blueprints carry sunset metadata."""

    MLP = "mlp"
    CONV = "conv"
    ATTENTION = "attention"
    LOW_RANK = "low_rank"
    NORMALIZATION = "normalization"
    SCAFFOLD = "scaffold"


class Outcome(StrEnum):
    """Final outcome of an adaptation, reported in FieldReports and lineage."""

    FOSSILIZED = "FOSSILIZED"
    CULLED = "CULLED"
    CANCELLED = "CANCELLED"
    ROLLED_BACK = "ROLLED_BACK"


class ControlMode(StrEnum):
    """Narset's allocator mode, switched with hysteresis."""

    REPAIR = "repair"
    CONSOLIDATION = "consolidation"


class PruneGranularity(StrEnum):
    """What a structured pruning action removes."""

    CHANNEL = "channel"
    HEAD = "head"
    LAYER = "layer"
