"""Kasmina's options: which layers get seed slots, how they are chunked, and the lifecycle's lengths.

Lifecycle lengths may be given in optimizer steps (``*_steps``, counted per training forward) or in epochs
(``*_epochs``, fractions allowed), which mean the same on any dataset: Tolaria converts them to steps from the
training data's batches per epoch when it starts (:meth:`KasminaConfig.in_steps`). Give one of each pair.
"""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from esper_contracts import GraftingStrategy


class KasminaConfig(BaseModel):
    """The ``kasmina`` section of a run's configuration (unknown keys are an error)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    target_modules: list[str] = Field(
        default_factory=list,
        description="fnmatch patterns on module paths (e.g. 'blocks.*.mlp'); when given, target_types is ignored",
    )
    target_types: list[str] = Field(
        default_factory=lambda: ["Linear"],
        description="Class names of modules to wrap: Linear, Conv1d, Conv2d, Embedding, GRU, LSTM, RNN, "
                    "MultiheadAttention, TransformerEncoderLayer, Sequential, or any class with out_features",
    )
    exclude_modules: list[str] = Field(default_factory=list, description="fnmatch patterns of module paths to skip")
    include_head: bool = Field(
        default=False,
        description="Let target_types match the output head (the model's last Linear); off by default, so a seed "
                    "never squeezes the logits through its bottleneck",
    )
    chunks_per_layer: int = Field(default=1, ge=1, description="Features/channels split into this many seeds")
    alpha_ramp_steps: int = Field(default=100, ge=0, description="GRAFTING ramp length in training forwards")
    alpha_strategy: GraftingStrategy = Field(default=GraftingStrategy.LINEAR, description="Shape of the alpha ramp")
    training_ready_loss: float = Field(
        default=0.05, ge=0.0,
        description="TRAINING is ready when the running reconstruction MSE / host activation variance drops below this",
    )
    training_min_steps: int = Field(default=10, ge=1, description="Training forwards before the loss test can pass")
    training_max_steps: int = Field(default=500, ge=1, description="TRAINING is ready after this many forwards anyway")
    stabilization_steps: int = Field(default=50, ge=0, description="Training forwards STABILIZATION waits")
    evaluation_steps: int = Field(default=50, ge=0, description="Forwards (train or eval) EVALUATING waits")
    fine_tuning_steps: int = Field(default=100, ge=0, description="Training forwards before FINE_TUNING is ready")
    embargo_epochs: int = Field(default=5, ge=0, description="Epochs a culled slot waits before it returns to DORMANT")
    telemetry_every: int = Field(default=10, ge=1, description="Sample activation statistics every N forwards")
    telemetry_max_rows: int = Field(default=512, ge=8, description="Rows (samples x positions) a telemetry sample uses")
    kernel_cache_mb: float = Field(default=64.0, ge=0.0, description="Size of the default library's kernel cache")
    alpha_ramp_epochs: float | None = Field(default=None, ge=0.0, description="GRAFTING ramp length in epochs "
                                            "(instead of alpha_ramp_steps)")
    training_max_epochs: float | None = Field(default=None, gt=0.0, description="TRAINING is ready after this many "
                                              "epochs anyway (instead of training_max_steps)")
    stabilization_epochs: float | None = Field(default=None, ge=0.0, description="Epochs STABILIZATION waits")
    evaluation_epochs: float | None = Field(default=None, ge=0.0, description="Epochs EVALUATING waits")
    fine_tuning_epochs: float | None = Field(default=None, ge=0.0, description="Epochs of FINE_TUNING before it is "
                                             "ready")

    @model_validator(mode="after")
    def _one_length_per_stage(self) -> Self:
        both = [f"{epochs} and {steps}" for epochs, steps in EPOCH_FIELDS.items()
                if getattr(self, epochs) is not None and steps in self.model_fields_set]
        if both:
            raise ValueError(f"give each lifecycle length once, in epochs or in steps, not both: {', '.join(both)}")
        return self

    @property
    def counts_in_epochs(self) -> bool:
        """Whether any lifecycle length is given in epochs (Tolaria must convert it before training)."""
        return any(getattr(self, name) is not None for name in EPOCH_FIELDS)

    def in_steps(self, batches_per_epoch: int) -> KasminaConfig:
        """This config with every length given in epochs converted to steps of ``batches_per_epoch``."""
        if batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be >= 1, got {batches_per_epoch}")
        updates: dict[str, int] = {}
        for epochs, steps in EPOCH_FIELDS.items():
            value = getattr(self, epochs)
            if value is not None:
                minimum = 1 if steps == "training_max_steps" else 0
                updates[steps] = max(minimum, round(value * batches_per_epoch))
        return self.model_copy(update=updates)


#: Each length in epochs and the step count it replaces.
EPOCH_FIELDS = {"alpha_ramp_epochs": "alpha_ramp_steps", "training_max_epochs": "training_max_steps",
                "stabilization_epochs": "stabilization_steps", "evaluation_epochs": "evaluation_steps",
                "fine_tuning_epochs": "fine_tuning_steps"}
