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

    CHANNEL = "channel"  # an output channel of a convolution
    NEURON = "neuron"  # an output feature of a Linear layer
    HEAD = "head"  # one attention head (its rows of the q/k/v projections, its columns of the output projection)
    LAYER = "layer"
    SEED = "seed"  # a whole fossilized seed (its kernel's output on its chunk)


class ImportanceCriterion(StrEnum):
    """How Elesh judged a unit: data-free (the weights alone) or data-aware (statistics of training data)."""

    MAGNITUDE = "magnitude"  # L2 norm of the unit's weights (data-free)
    BN_SCALE = "bn_scale"  # |gamma| of the BatchNorm that follows the unit (data-free)
    TAYLOR = "taylor"  # |sum(w * dL/dw)| over the unit: first-order loss change if removed (data-aware)
    ACTIVATION = "activation"  # mean |activation| of the unit's output (data-aware)


class PruneMode(StrEnum):
    """The blast radius of a plan: a reversible probe, or physical removal."""

    PROBE = "probe"  # mask the units for a window and measure the loss change; undone after
    LYSIS = "lysis"  # remove the units physically (tensors shrink); needs intensity and a safe boundary
