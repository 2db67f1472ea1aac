"""Hierarchical telemetry: region summaries -> regional aggregators -> one summary per domain.

Workers send one constant-size :class:`~esper_contracts.HealthSummaryReport` per region and window.
Within each domain the reports (sorted by region id, so the result is deterministic) are folded in
groups of ``fan_in`` by aggregators, whose outputs are folded again, until one report per domain is
left. Tamiyo therefore receives ``number of domains`` messages per window, however many seeds, regions
or workers there are; each tree level divides the message count by ``fan_in``.

Folding keeps every field meaningful: counts and spend are summed, means are weighted by seed count,
the maximum gradient norm stays a maximum, and ``source_reports`` counts the region reports folded in.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from esper_contracts import HealthSummaryReport, SeedStage

#: Domain of reports that name none (their region was never allocated to a domain).
UNASSIGNED_DOMAIN = "unassigned"


def fold(reports: Sequence[HealthSummaryReport], *, region_id: str, domain_id: str | None) -> HealthSummaryReport:
    """Merge several summaries into one (seed-weighted means, sums, maxima, latest window and epoch)."""
    if not reports:
        raise ValueError(f"nothing to fold for {region_id!r}")
    seeds = sum(r.seed_count for r in reports)
    # Weighting by seeds keeps a 1-seed region from counting as much as a 1000-seed one; with no seeds
    # at all every report counts once.
    weights = [r.seed_count for r in reports] if seeds > 0 else [1] * len(reports)
    total = sum(weights)

    def mean(attr: str) -> float:
        # Scaled by the largest magnitude, so that huge (finite) values cannot overflow to inf on the way:
        # every term is at most 1 and the result lies between the smallest and the largest value.
        values = [float(getattr(r, attr)) for r in reports]
        scale = max(abs(v) for v in values) or 1.0
        return scale * sum(w / total * (v / scale) for w, v in zip(weights, values, strict=True))

    stages: dict[SeedStage, int] = {}
    for r in reports:
        for stage, count in r.stage_counts.items():
            stages[stage] = stages.get(stage, 0) + count
    return HealthSummaryReport(
        region_id=region_id,
        domain_id=domain_id,
        window=max(r.window for r in reports),
        epoch=max(r.epoch for r in reports),
        seed_count=seeds,
        active_seeds=sum(r.active_seeds for r in reports),
        stage_counts=stages,
        mean_gradient_norm=mean("mean_gradient_norm"),
        max_gradient_norm=max(r.max_gradient_norm for r in reports),
        mean_dead_node_ratio=min(1.0, mean("mean_dead_node_ratio")),
        mean_activation_sparsity=min(1.0, mean("mean_activation_sparsity")),
        mean_chunk_variance=mean("mean_chunk_variance"),
        loss_trend=mean("loss_trend"),
        budget_spent=min(sum(r.budget_spent for r in reports), sys.float_info.max),
        source_reports=sum(max(1, r.source_reports) for r in reports),
    )


@dataclass
class TreeStats:
    """Messages that crossed each level of the tree in one window (level 0 = region reports in)."""

    per_level: list[int] = field(default_factory=list)

    @property
    def to_tamiyo(self) -> int:
        """Messages the top of the tree hands to Tamiyo."""
        return self.per_level[-1] if self.per_level else 0


class TelemetryTree:
    """Folds a window of region reports into one report per domain through ``fan_in``-wide aggregators."""

    def __init__(self, fan_in: int = 10) -> None:
        if fan_in < 2:
            raise ValueError(f"fan_in must be at least 2, got {fan_in}")
        self.fan_in = fan_in

    def aggregate(self, reports: Sequence[HealthSummaryReport]) -> tuple[list[HealthSummaryReport], TreeStats]:
        """One report per domain (sorted by domain), and how many messages each level carried."""
        by_domain: dict[str, list[HealthSummaryReport]] = {}
        for r in reports:
            by_domain.setdefault(r.domain_id or UNASSIGNED_DOMAIN, []).append(r)
        stats = TreeStats([len(reports)])
        levels: dict[str, list[HealthSummaryReport]] = {
            d: sorted(rs, key=lambda r: r.region_id) for d, rs in sorted(by_domain.items())
        }
        # Fold every domain one level at a time, so the stats count what each tier of aggregators sends.
        while any(len(level) > 1 for level in levels.values()):
            for domain, level in levels.items():
                if len(level) > 1:
                    levels[domain] = [
                        fold(level[i: i + self.fan_in], region_id=f"{domain}/agg{i // self.fan_in}", domain_id=domain)
                        for i in range(0, len(level), self.fan_in)
                    ]
            stats.per_level.append(sum(len(level) for level in levels.values()))
        top = [fold(level, region_id=domain, domain_id=domain) for domain, level in levels.items()]
        stats.per_level.append(len(top))
        return top, stats
