"""Tamiyo v1: a readable heuristic controller.

* **When** to grow: the validation loss has not improved by ``plateau_min_delta`` for
  ``plateau_patience_epochs`` boundaries (after a warm-up), fewer than ``max_concurrent_adaptations``
  seeds are live, and the model is starved rather than converged: a training error under
  ``min_train_error`` with validation accuracy as good (within ``converged_gap``) leaves no headroom to grow into.
* **Where**: the eligible dormant seed in the worst health — the one whose layer has gone quiet
  (low gradient norm), wastes capacity (dead or sparse units) or carries little signal (low variance).
* **What**: the first kernel that fits the seed's interface, in the configured tag preference,
  skipping blueprints already culled in that slot.
* **Gates**: readiness-driven stages advance when the seed says it is ready; EVALUATING compares the
  validation metric with the pre-germination baseline and culls a regression; FINE_TUNING fossilizes
  only a seed that ends at least ``min_improvement`` above the baseline. A crashing kernel is culled by
  Kasmina itself; Tolaria reports that outcome to the policy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from esper_contracts import (
    CompiledKernelArtifact,
    KasminaControlCommand,
    Outcome,
    SeedStage,
    SeedTelemetry,
    SystemStatePacket,
)

from .base import Adaptation, PolicyBase, next_stage
from .config import TamiyoConfig
from .protocols import KernelSelector

#: How many dormant candidates, worst first, are tried before giving up on a boundary (each needs a query).
MAX_CANDIDATES_TRIED = 8


class PlateauDetector:
    """Counts boundaries since the validation loss last improved by at least ``min_delta``."""

    def __init__(self, patience: int, min_delta: float) -> None:
        self.patience = patience
        self.min_delta = min_delta
        self.best = math.inf
        self.stale = 0

    def update(self, val_loss: float) -> None:
        """Feed one boundary's validation loss."""
        if val_loss < self.best - self.min_delta:
            self.best, self.stale = val_loss, 0
        else:
            self.stale += 1

    @property
    def plateaued(self) -> bool:
        """True once ``patience`` boundaries passed without improvement."""
        return self.stale >= self.patience

    def reset(self) -> None:
        """Start counting afresh (after acting on a plateau), keeping the best loss seen."""
        self.stale = 0


def unhealthiness(seeds: list[SeedTelemetry]) -> list[float]:
    """A score per seed, higher = sicker: dead + sparse units, and gradient/variance low relative to peers.

    Gradient norm and variance are divided by the largest among the candidates so that the score does
    not depend on the model's scale; each of the four terms lies in [0, 1].
    """
    g_max = max((t.gradient_norm for t in seeds), default=0.0) or 1.0
    v_max = max((t.chunk_variance for t in seeds), default=0.0) or 1.0
    return [
        t.dead_node_ratio + t.activation_sparsity + (1.0 - t.gradient_norm / g_max) + (1.0 - t.chunk_variance / v_max)
        for t in seeds
    ]


class HeuristicPolicy(PolicyBase):
    """Plateau-triggered, health-targeted, gate-checked germination (Tamiyo v1)."""

    def __init__(self, config: TamiyoConfig | None = None, kernels: KernelSelector | None = None) -> None:
        super().__init__(config, kernels)
        self._plateau = PlateauDetector(self.config.plateau_patience_epochs, self.config.plateau_min_delta)

    def _observe(self, packet: SystemStatePacket, metric: float) -> None:
        self._plateau.update(packet.val_loss)

    def _may_germinate(self, packet: SystemStatePacket, live: int) -> bool:
        return self._plateau.plateaued and self._under_caps(live) and not self.converged(packet)

    def converged(self, packet: SystemStatePacket) -> bool:
        """A plateau with no headroom: training error below ``min_train_error`` and validation as good.

        Growing then adds parameters for no gain; a plateau with training error left is starvation.
        """
        train_acc, val_acc = packet.metrics.get("train_accuracy"), packet.val_accuracy
        if train_acc is None or val_acc is None or self.config.min_train_error <= 0.0:
            return False
        return 1.0 - train_acc < self.config.min_train_error and train_acc - val_acc <= self.config.converged_gap

    def _germinate(
        self, packet: SystemStatePacket, dormant: list[SeedTelemetry], live: int, metric: float
    ) -> list[KasminaControlCommand]:
        eligible = [t for t in dormant if self._eligible(t)]
        if not eligible:
            return []
        scores = unhealthiness(eligible)
        # Sickest first; ties go to the earlier seed in the packet so the choice is deterministic.
        order = sorted(range(len(eligible)), key=lambda i: -scores[i])[:MAX_CANDIDATES_TRIED]
        cache: dict[Any, list[CompiledKernelArtifact]] = {}
        for i in order:
            t = eligible[i]
            kernels = self._candidate_kernels(t, cache)
            if not kernels:
                continue
            why = f"plateau: val_loss flat {self._plateau.stale} epochs"
            self._plateau.reset()  # one germination per plateau; the next must be earned afresh
            return self._germinate_with(t, kernels[0], metric, why)
        return []

    def _steer(
        self, t: SeedTelemetry, rec: Adaptation, packet: SystemStatePacket, metric: float
    ) -> KasminaControlCommand | None:
        cfg = self.config
        stage = t.stage
        blended = stage in (SeedStage.GRAFTING, SeedStage.STABILIZATION, SeedStage.EVALUATING, SeedStage.FINE_TUNING)
        # A blended seed that wrecks the model is cut at once; the milder check waits for EVALUATING.
        if blended and metric < rec.baseline - 3 * cfg.cull_regression_tolerance:
            return self._end(t, rec, packet, Outcome.CULLED, f"severe regression {metric:.4f} < {rec.baseline:.4f}")
        stuck = not t.is_ready_for_transition and rec.boundaries_in_stage > cfg.max_training_epochs
        if stage is SeedStage.TRAINING and stuck:
            return self._end(t, rec, packet, Outcome.CULLED, "reconstruction never converged")
        if stage is SeedStage.EVALUATING:
            rec.scores.append(metric)
            if rec.boundaries_in_stage < cfg.evaluation_epochs:
                return None
            measured = _mean(rec.scores[-cfg.evaluation_epochs :])
            if measured < rec.baseline - cfg.cull_regression_tolerance:
                why = f"evaluation regressed: {measured:.4f} vs baseline {rec.baseline:.4f}"
                return self._end(t, rec, packet, Outcome.CULLED, why)
            if next_stage(stage, rec.trainable) is SeedStage.FINE_TUNING:
                why = f"evaluation passed: {measured:.4f} vs {rec.baseline:.4f}"
                return self._advance(t, SeedStage.FINE_TUNING, why)
            return self._final_gate(t, rec, packet, measured)
        if stage is SeedStage.FINE_TUNING:
            rec.scores.append(metric)
            if rec.boundaries_in_stage < cfg.fine_tuning_epochs:
                return None
            return self._final_gate(t, rec, packet, _mean(rec.scores[-cfg.fine_tuning_epochs :]))
        return self._advance_when_ready(t, rec, packet)

    def _final_gate(
        self, t: SeedTelemetry, rec: Adaptation, packet: SystemStatePacket, measured: float
    ) -> KasminaControlCommand:
        """Fossilize a seed that beat its baseline by ``min_improvement``; cull it otherwise."""
        if measured >= rec.baseline + self.config.min_improvement:
            why = f"improved {rec.baseline:.4f} -> {measured:.4f}"
            return self._end(t, rec, packet, Outcome.FOSSILIZED, why)
        why = f"no gain: {measured:.4f} vs baseline {rec.baseline:.4f}"
        return self._end(t, rec, packet, Outcome.CULLED, why)

    def state_dict(self) -> dict[str, Any]:
        """Base state plus the plateau tracker."""
        state = super().state_dict()
        best = self._plateau.best
        state["plateau"] = {"best": None if math.isinf(best) else best, "stale": self._plateau.stale}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the base state and the plateau tracker."""
        super().load_state_dict(state)
        best = state["plateau"]["best"]
        self._plateau.best = math.inf if best is None else float(best)
        self._plateau.stale = int(state["plateau"]["stale"])


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else -math.inf

