"""Kasmina's options: which layers get seed slots, how they are chunked, and the lifecycle's step counts."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

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
