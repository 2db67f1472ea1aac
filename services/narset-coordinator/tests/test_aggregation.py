"""Hierarchical telemetry: the fold keeps fields meaningful and Tamiyo's share does not grow with seeds."""

from __future__ import annotations

import itertools

import pytest

from esper_contracts import HealthSummaryReport, SeedStage
from esper_narset_coordinator.aggregation import TelemetryTree, fold


def _region(i: int, domain: str | None, seeds: int, grad: float = 1.0) -> HealthSummaryReport:
    return HealthSummaryReport(region_id=f"r{i:04d}", domain_id=domain, window=3, epoch=3, seed_count=seeds,
                               active_seeds=1, stage_counts={SeedStage.DORMANT: seeds - 1, SeedStage.TRAINING: 1},
                               mean_gradient_norm=grad, max_gradient_norm=2 * grad, mean_dead_node_ratio=0.1,
                               loss_trend=0.01, budget_spent=0.5)


def test_fold_weights_by_seeds_and_sums_counts() -> None:
    merged = fold([_region(0, "d", 10, grad=1.0), _region(1, "d", 30, grad=3.0)], region_id="d", domain_id="d")
    assert merged.seed_count == 40 and merged.active_seeds == 2
    assert merged.mean_gradient_norm == pytest.approx(2.5)
    assert merged.max_gradient_norm == 6.0 and merged.budget_spent == 1.0
    assert merged.stage_counts == {SeedStage.DORMANT: 38, SeedStage.TRAINING: 2}
    assert merged.source_reports == 2


@pytest.mark.parametrize("regions", [10, 100, 1000])
def test_tamiyo_gets_one_message_per_domain_whatever_the_size(regions: int) -> None:
    domains = ["emb", "early", "mid", "head"]
    reports = [_region(i, domains[i % 4], seeds=100) for i in range(regions)]
    top, stats = TelemetryTree(fan_in=10).aggregate(reports)
    assert [r.domain_id for r in top] == sorted(domains)
    assert stats.to_tamiyo == 4
    assert stats.per_level[0] == regions and all(a >= b for a, b in itertools.pairwise(stats.per_level))
    assert sum(r.seed_count for r in top) == regions * 100
    assert sum(r.source_reports for r in top) == regions


def test_fold_is_deterministic_whatever_the_arrival_order() -> None:
    reports = [_region(i, "d", seeds=i + 1, grad=float(i)) for i in range(37)]
    a, _ = TelemetryTree(fan_in=3).aggregate(reports)
    b, _ = TelemetryTree(fan_in=3).aggregate(list(reversed(reports)))
    assert a == b


def test_reports_without_a_domain_are_grouped_not_lost() -> None:
    top, _ = TelemetryTree().aggregate([_region(0, None, 5), _region(1, "d", 5)])
    assert sorted(r.region_id for r in top) == ["d", "unassigned"]


def test_huge_finite_values_fold_to_finite_values() -> None:
    # Found by fuzzing the heartbeat endpoint: weighted sums of huge values overflowed to inf, which the
    # contract refuses, and the heartbeat answered 500.
    big = 1.5e308
    reports = [HealthSummaryReport(region_id=f"r{i}", window=1, epoch=1, seed_count=10**9, mean_gradient_norm=big,
                                   mean_chunk_variance=big, loss_trend=-big, budget_spent=big) for i in range(3)]
    merged = fold(reports, region_id="d", domain_id="d")
    assert merged.mean_gradient_norm == pytest.approx(big) and merged.loss_trend == pytest.approx(-big)
    assert merged.budget_spent == pytest.approx(1.7976931348623157e308)
