"""From one region's seed telemetry to the two things Narset sends upward: a health summary and allocator inputs.

Both are constant-size whatever the number of seeds in the region. ``loss_trend`` is the relative change
of the validation loss over the last window (positive = getting worse); it is global, because a single
loss cannot be attributed to a region, while failures, waste and gradients are the region's own.
"""

from __future__ import annotations

from collections.abc import Sequence

from esper_contracts import (
    ACTIVE_STAGES,
    AllocatorInputs,
    HealthSummaryReport,
    SeedStage,
    SeedTelemetry,
    SystemStatePacket,
)
from esper_policy.heuristic import unhealthiness

PROGRESS_AT_FULL = 0.02  # a 2% loss drop per window counts as healthy progress (1.0)
TREND_AT_FULL_INSTABILITY = 0.05  # a 5% loss rise per window counts as fully unstable
_FAILED = frozenset({SeedStage.CULLED, SeedStage.ROLLED_BACK})


def loss_trend(previous: float | None, current: float) -> float:
    """Relative change of the loss (0 when there is no previous value or it is 0)."""
    if previous is None or previous == 0:
        return 0.0
    return (current - previous) / abs(previous)


def _clamp(x: float, low: float, high: float) -> float:
    return low if x < low else high if x > high else x


def allocator_inputs(seeds: Sequence[SeedTelemetry], trend: float, windowed: float | None = None) -> AllocatorInputs:
    """Progress, stability and efficiency of a region (see the allocator's input ranges).

    * progress: the loss trend scaled so that a 2% drop per window is 1 and a rise is negative;
    * stability: 1 minus twice the share of failed seeds (errors, culled, rolled back) minus a rising loss,
      and no more than ``windowed`` (the region's :class:`~esper_policy.stability.StabilityTracker` score:
      rollback rate, anomaly rate, loss jitter, persistent spikes) when it is given;
    * efficiency: 1 minus the mean waste (dead units and sparsity) of the region's outputs.
    """
    progress = _clamp(-trend / PROGRESS_AT_FULL, -1.0, 1.0)
    n = len(seeds)
    failed = sum(1 for t in seeds if t.error_count > 0 or t.stage in _FAILED) / n if n else 0.0
    rising = _clamp(trend / TREND_AT_FULL_INSTABILITY, 0.0, 1.0)
    stability = 1.0 - _clamp(2 * failed + 0.5 * rising, 0.0, 1.0)
    if windowed is not None:
        stability = min(stability, _clamp(windowed, 0.0, 1.0))
    waste = sum(t.dead_node_ratio + t.activation_sparsity for t in seeds) / (2 * n) if n else 0.0
    return AllocatorInputs(progress=progress, stability=stability, efficiency=1.0 - _clamp(waste, 0.0, 1.0))


def summarize_region(
    region_id: str,
    domain_id: str | None,
    seeds: Sequence[SeedTelemetry],
    *,
    window: int,
    epoch: int,
    trend: float,
    budget_spent: float,
) -> HealthSummaryReport:
    """One region's health over one window (a leaf of the telemetry tree: ``source_reports`` is 0)."""
    n = len(seeds)
    stages: dict[SeedStage, int] = {}
    for t in seeds:
        stages[t.stage] = stages.get(t.stage, 0) + 1

    def mean(values: list[float]) -> float:
        return sum(values) / n if n else 0.0

    return HealthSummaryReport(
        region_id=region_id,
        domain_id=domain_id,
        window=window,
        epoch=epoch,
        seed_count=n,
        active_seeds=sum(1 for t in seeds if t.stage in ACTIVE_STAGES),
        stage_counts=stages,
        mean_gradient_norm=mean([t.gradient_norm for t in seeds]),
        max_gradient_norm=max((t.gradient_norm for t in seeds), default=0.0),
        mean_dead_node_ratio=_clamp(mean([t.dead_node_ratio for t in seeds]), 0.0, 1.0),
        mean_activation_sparsity=_clamp(mean([t.activation_sparsity for t in seeds]), 0.0, 1.0),
        mean_chunk_variance=mean([t.chunk_variance for t in seeds]),
        loss_trend=trend,
        budget_spent=budget_spent,
        source_reports=0,
    )


def packet_for_tamiyo(packet: SystemStatePacket, candidates_per_region: int) -> SystemStatePacket:
    """What Tamiyo reads in distributed mode: regions, not seeds ("Tamiyo-Prime reads summaries").

    Every region's seed count, every seed that is not DORMANT or FOSSILIZED (those Tamiyo steers or waits on),
    and each region's ``candidates_per_region`` sickest dormant seeds (the ones the heuristic would grow first).
    Its size depends on the regions and the live seeds, not on how many seeds the model has.
    """
    counts: dict[str, int] = {}
    dormant: dict[str, list[SeedTelemetry]] = {}
    kept: list[SeedTelemetry] = []
    for t in packet.seeds:
        counts[t.layer_id] = counts.get(t.layer_id, 0) + 1
        if t.stage is SeedStage.DORMANT:
            dormant.setdefault(t.layer_id, []).append(t)
        elif t.stage is not SeedStage.FOSSILIZED:
            kept.append(t)
    for seeds in dormant.values():
        scores = unhealthiness(seeds)
        best = sorted(range(len(seeds)), key=lambda i: -scores[i])[:candidates_per_region]
        kept += [seeds[i] for i in sorted(best)]
    return packet.model_copy(update={"seeds": kept, "seeds_per_region": counts})
