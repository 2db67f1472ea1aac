"""Tamiyo's options: the ``tamiyo`` section of a run's YAML file.

Every field has a default that works for small models; the YAML only names what it changes.
Unknown keys are rejected (``extra="forbid"``) so a misspelt option is an error, never a silent default.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from esper_contracts import KernelStatus


class TamiyoConfig(BaseModel):
    """Options of the control policies (heuristic, random and the do-nothing baseline)."""

    model_config = ConfigDict(extra="forbid")

    policy: Literal["heuristic", "random", "none", "learned"] = Field(
        default="heuristic", description="Which controller the SDK builds from this section"
    )
    learned_policy_path: str | None = Field(
        default=None, description="policy: learned — the policy artifact (JSON, see esper_policy.network) to serve"
    )
    warmup_epochs: int = Field(default=3, ge=0, description="No germination before this epoch")
    plateau_patience_epochs: int = Field(default=3, ge=1, description="Epochs without val-loss improvement = plateau")
    plateau_min_delta: float = Field(default=1e-3, ge=0.0, description="Smallest val-loss drop counted as improvement")
    max_concurrent_adaptations: int = Field(default=1, ge=1, description="Seeds live (germinated..fine-tuning) at once")
    max_germinations: int | None = Field(default=None, ge=0, description="Cap on germinations per run (None: no cap)")
    germination_cooldown_epochs: int = Field(default=0, ge=0, description="Epochs between two germinations")
    last_germination_epoch: int | None = Field(
        default=None, ge=0, description="No germination after this epoch, so late seeds can finish their lifecycle"
    )
    embargo_epochs: int = Field(default=5, ge=0, description="A culled slot waits this long before it may regrow")
    cull_regression_tolerance: float = Field(
        default=0.02, ge=0.0, description="Cull when the val metric falls this far below the pre-germination baseline"
    )
    min_improvement: float = Field(
        default=0.0, description="Fossilize only when the val metric beats the baseline by at least this"
    )
    evaluation_epochs: int = Field(default=1, ge=1, description="Epochs of clean measurement in EVALUATING")
    fine_tuning_epochs: int = Field(default=3, ge=1, description="Epochs of FINE_TUNING before the final gate")
    max_training_epochs: int = Field(
        default=10, ge=1, description="A seed still not reconstructing after this long in TRAINING is culled"
    )
    stage_timeout_epochs: int = Field(
        default=20, ge=1, description="A stage that never signals readiness is moved on after this long"
    )
    kernel_tags_required: list[str] = Field(default_factory=list)
    kernel_tags_excluded: list[str] = Field(default_factory=list)
    kernel_status: KernelStatus | None = Field(
        default=None, description="Only kernels in this status (None: any status the library offers)"
    )
    blueprint_preference: list[str] = Field(
        default_factory=list, description="Kernel tags in order of preference; untagged kernels come last"
    )
    protected_regions: list[str] = Field(
        default_factory=list, description="fnmatch patterns of layer ids that are never adapted"
    )
    min_train_error: float = Field(
        default=0.005, ge=0.0, le=1.0, description="Converged, not starved: no germination while the training "
        "error (1 - train accuracy) is below this and validation accuracy is within converged_gap of training's "
        "(a plateau there means no headroom; 0 disables the test)")
    converged_gap: float = Field(default=0.02, ge=0.0, le=1.0, description="Train and val accuracy this close count "
                                 "as no overfitting, for the min_train_error test")
    random_germination_probability: float = Field(
        default=0.25, ge=0.0, le=1.0, description="RandomGerminationPolicy: chance to germinate at a boundary"
    )
    seed: int = Field(default=0, description="Seed of the random policy's generator")
