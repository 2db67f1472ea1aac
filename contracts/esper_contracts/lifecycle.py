"""Seed lifecycle contracts: commands to Kasmina, telemetry from it, and the epoch-boundary heartbeat."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Self

from pydantic import Field, JsonValue, model_validator

from .base import (
    Correlation,
    FiniteFloat,
    Identifier,
    NonNegativeFloat,
    NonNegativeInt,
    StrictModel,
    Text,
    UnitInterval,
    new_id,
)
from .blueprints import TensorInterface
from .enums import CommandType, GraftingStrategy, Outcome, SeedStage
from .ids import SeedId, blueprint_id_of

#: Every legal move of the lifecycle state machine. Kasmina enforces it; Tamiyo plans with it.
#: CULLED is reachable from every stage where a kernel is live, so a regression can always be cut;
#: ROLLED_BACK is reachable from every non-terminal active stage because Tolaria may roll back at any time.
LEGAL_TRANSITIONS: dict[SeedStage, frozenset[SeedStage]] = {
    SeedStage.DORMANT: frozenset({SeedStage.GERMINATED}),
    SeedStage.GERMINATED: frozenset({SeedStage.LOADING, SeedStage.CANCELLED, SeedStage.ROLLED_BACK}),
    SeedStage.LOADING: frozenset(
        {SeedStage.TRAINING, SeedStage.GRAFTING, SeedStage.CULLED, SeedStage.CANCELLED, SeedStage.ROLLED_BACK}
    ),
    SeedStage.TRAINING: frozenset({SeedStage.GRAFTING, SeedStage.CULLED, SeedStage.CANCELLED, SeedStage.ROLLED_BACK}),
    SeedStage.GRAFTING: frozenset({SeedStage.STABILIZATION, SeedStage.CULLED, SeedStage.ROLLED_BACK}),
    SeedStage.STABILIZATION: frozenset({SeedStage.EVALUATING, SeedStage.CULLED, SeedStage.ROLLED_BACK}),
    SeedStage.EVALUATING: frozenset(
        {SeedStage.FINE_TUNING, SeedStage.FOSSILIZED, SeedStage.CULLED, SeedStage.ROLLED_BACK}
    ),
    SeedStage.FINE_TUNING: frozenset({SeedStage.FOSSILIZED, SeedStage.CULLED, SeedStage.ROLLED_BACK}),
    SeedStage.FOSSILIZED: frozenset(),
    SeedStage.CULLED: frozenset({SeedStage.DORMANT}),
    SeedStage.CANCELLED: frozenset({SeedStage.DORMANT}),
    SeedStage.ROLLED_BACK: frozenset(),
}

#: Stages in which a seed holds a kernel (it occupies its slot).
ACTIVE_STAGES = frozenset({
    SeedStage.GERMINATED, SeedStage.LOADING, SeedStage.TRAINING, SeedStage.GRAFTING, SeedStage.STABILIZATION,
    SeedStage.EVALUATING, SeedStage.FINE_TUNING,
})
#: Stages skipped for fixed-function kernels (no trainable parameters).
TRAINABLE_ONLY_STAGES = frozenset({SeedStage.TRAINING, SeedStage.FINE_TUNING})


def is_legal_transition(src: SeedStage, dst: SeedStage) -> bool:
    """True when the lifecycle allows moving a seed from ``src`` to ``dst``."""
    return dst in LEGAL_TRANSITIONS[src]


class KasminaControlCommand(StrictModel):
    """A lifecycle command from Tamiyo to one seed of one KasminaLayer, applied at an epoch boundary."""

    command_id: Identifier = Field(default_factory=new_id)
    layer_id: Identifier = Field(description="Module path of the KasminaLayer (its slot name)")
    seed_index: NonNegativeInt = Field(description="Index of the seed (chunk) within the layer")
    command: CommandType
    target_stage: SeedStage | None = Field(default=None, description="Destination stage for ADVANCE")
    kernel_artifact_id: Identifier | None = Field(default=None, description="Kernel to load, for GERMINATE")
    blueprint_id: Identifier | None = None
    selected_for_tags: list[Identifier] = Field(default_factory=list)
    grafting_strategy: GraftingStrategy = GraftingStrategy.LINEAR
    issued_at_epoch: NonNegativeInt = 0
    reason: Text = Field(default="", max_length=2000)

    @model_validator(mode="after")
    def _check_arguments(self) -> Self:
        if self.command is CommandType.GERMINATE and self.kernel_artifact_id is None:
            raise ValueError("GERMINATE needs kernel_artifact_id")
        if self.command is CommandType.ADVANCE and self.target_stage is None:
            raise ValueError("ADVANCE needs target_stage")
        if self.command is not CommandType.ADVANCE and self.target_stage is not None:
            raise ValueError(f"target_stage is only meaningful for ADVANCE, not {self.command.value}")
        return self

    @property
    def seed_id(self) -> SeedId:
        """The id of the seed the command is for: ``<layer path>[<index>]``."""
        return str.__new__(SeedId, f"{self.layer_id}[{self.seed_index}]")


class SeedTelemetry(StrictModel):
    """Per-seed health report emitted by Kasmina at each epoch end."""

    layer_id: Identifier
    seed_index: NonNegativeInt
    epoch: NonNegativeInt = Field(description="Training epoch the measurements belong to")
    stage: SeedStage
    alpha: UnitInterval = 0.0
    epochs_in_stage: NonNegativeInt = 0
    chunk_variance: NonNegativeFloat = 0.0
    dead_node_ratio: UnitInterval = 0.0
    avg_correlation: Correlation = 0.0
    gradient_norm: NonNegativeFloat = 0.0
    activation_sparsity: UnitInterval = 0.0
    is_ready_for_transition: bool = False
    kernel_artifact_id: Identifier | None = None
    blueprint_id: Identifier | None = None
    execution_latency_us: NonNegativeFloat = 0.0
    error_count: NonNegativeInt = 0
    embargo_until_epoch: NonNegativeInt | None = None
    interface: TensorInterface | None = Field(default=None, description="Shape contract of the seed's chunk")
    kernel_trainable: bool | None = Field(
        default=None,
        description="Whether the seed's kernel has trainable parameters (a fixed-function kernel skips TRAINING and "
        "FINE_TUNING); None until a kernel has been loaded",
    )

    @property
    def seed_id(self) -> SeedId:
        """Human-readable id of the seed: ``<layer path>[<index>]``."""
        # Both parts are validated fields, and the policy reads this for every seed at every boundary:
        # build the id without checking them again.
        return str.__new__(SeedId, f"{self.layer_id}[{self.seed_index}]")


class SystemStatePacket(StrictModel):
    """Tolaria's epoch-boundary heartbeat: global metrics plus every seed's telemetry."""

    run_id: Identifier
    epoch: NonNegativeInt
    global_step: NonNegativeInt = 0
    train_loss: FiniteFloat
    val_loss: FiniteFloat
    val_accuracy: UnitInterval | None = None
    learning_rate: NonNegativeFloat | None = None
    host_parameters: NonNegativeInt = 0
    seed_parameters: NonNegativeInt = 0
    epoch_time_s: NonNegativeFloat = 0.0
    device: Text = "cpu"
    #: The hardware segment of the artifact ids this trainer can run (``cpu_avx512``, ``cuda_sm90``): Tamiyo
    #: asks Urza for kernels built and validated for exactly this hardware. None: any.
    hardware: Identifier | None = None
    metrics: dict[Identifier, FiniteFloat] = Field(default_factory=dict)
    seeds: list[SeedTelemetry] = Field(default_factory=list)
    #: Set by a trainer that sends Tamiyo a summary: every region's seed count, while ``seeds`` holds only the live
    #: seeds and each region's best dormant candidates, so the packet does not grow with the model.
    seeds_per_region: dict[Identifier, NonNegativeInt] = Field(default_factory=dict)
    #: Tamiyo's state to resume this run from, sent by the trainer after a rollback, a resume, or when Tamiyo
    #: answered ``controller_state_required`` (it restarted): "Tolaria saves host and Tamiyo in lockstep".
    controller_state: dict[str, JsonValue] | None = None

    @property
    def validation_metric(self) -> float:
        """This epoch's validation metric, higher is better (see :func:`validation_metric`)."""
        return validation_metric(self.val_accuracy, self.val_loss)


class AdaptationSignal(StrictModel):
    """The controller's answer to a SystemStatePacket: commands to apply and what Tolaria must do."""

    epoch: NonNegativeInt
    commands: list[KasminaControlCommand] = Field(default_factory=list)
    optimizer_rebuild_required: bool = False
    emergency_rollback_required: bool = False
    reason: Text = Field(default="", max_length=2000)
    #: The controller's state after this decision: the trainer keeps the latest in its checkpoints.
    controller_state: dict[str, JsonValue] | None = None
    #: The controller has no state for this run (it restarted): resend the packet with ``controller_state``.
    controller_state_required: bool = False


class FieldReport(StrictModel):
    """Outcome of one adaptation in a real model, sent by Tamiyo to Karn, Urza and Simic."""

    report_id: Identifier = Field(default_factory=new_id)
    blueprint_id: Identifier
    kernel_artifact_id: Identifier | None = None
    seed_id: Identifier
    run_id: Identifier | None = None
    pre_metric: FiniteFloat
    post_metric: FiniteFloat
    outcome: Outcome
    epochs_active: NonNegativeInt = 0
    eval_metrics: dict[Identifier, FiniteFloat] = Field(default_factory=dict)


def validation_metric(val_accuracy: float | None, val_loss: float | None) -> float:
    """The one metric adaptations are judged by, higher is better: validation accuracy, else minus the loss.

    Accuracy is used whenever it was measured (classification); otherwise minus the validation loss, so that
    "higher is better" holds for every task. Raises ValueError when neither was measured.
    """
    if val_accuracy is not None:
        return float(val_accuracy)
    if val_loss is None:
        raise ValueError("no validation metric: neither val_accuracy nor val_loss was measured")
    return -float(val_loss)


def field_report(*, seed_id: str, outcome: Outcome, kernel_artifact_id: str | None, pre_metric: float,
                 post_metric: float, epoch: int, germinated_epoch: int | None, blueprint_id: str | None = None,
                 run_id: str | None = None, eval_metrics: Mapping[str, float] | None = None) -> FieldReport:
    """The field report that closes one adaptation; every writer of FieldReports builds them here.

    ``pre_metric`` is the baseline the seed had to beat and ``post_metric`` the metric at its end, both
    from :func:`validation_metric`. Without an explicit ``blueprint_id`` the blueprint is read from the
    kernel's artifact id, else it is ``"unknown"``. ``epochs_active`` counts the epochs since germination
    (0 for a seed that never germinated, ``germinated_epoch=None``).
    """
    return FieldReport(
        blueprint_id=blueprint_id or blueprint_id_of(kernel_artifact_id) or "unknown",
        kernel_artifact_id=kernel_artifact_id,
        seed_id=seed_id,
        run_id=run_id,
        pre_metric=pre_metric,
        post_metric=post_metric,
        outcome=outcome,
        epochs_active=0 if germinated_epoch is None else max(0, epoch - germinated_epoch),
        eval_metrics=dict(eval_metrics or {}),
    )
