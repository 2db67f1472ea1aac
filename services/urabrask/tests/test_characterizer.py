"""Tags: rule-based for a small population, percentiles of the same hardware's population after that."""

from __future__ import annotations

import pytest

from esper_urabrask.characterizer import Characterizer


def test_rules_apply_until_the_population_is_large_enough() -> None:
    c = Characterizer(min_population=3)
    fast = c.characterize("cpu", "a", latency_ms=0.05, memory_mb=0.5, drift=1e-7, stable=True)
    assert fast.mode == "rules" and fast.tags == ["high_speed", "low_memory", "numerically_stable"]
    slow = c.characterize("cpu", "b", latency_ms=5.0, memory_mb=100.0, drift=1e-7, stable=False)
    assert slow.tags == ["low_speed", "high_memory"]
    middle = c.characterize("cpu", "c", latency_ms=0.5, memory_mb=10.0, drift=1e-7, stable=True)
    assert middle.tags == ["medium_speed", "numerically_stable"]
    assert c.population("cpu") == 3


def test_percentiles_rank_against_the_same_hardware_only() -> None:
    c = Characterizer(min_population=10)
    for i in range(10):
        c.record("cpu", f"k{i}", latency_ms=1.0 + i, memory_mb=10.0 + i, drift=0.0)
    for i in range(10):  # a much faster GPU population must not change the CPU percentiles
        c.record("cuda_sm90", f"g{i}", latency_ms=0.01, memory_mb=1.0, drift=0.0)
    quick = c.characterize("cpu", "new-fast", latency_ms=0.5, memory_mb=100.0, drift=0.0, stable=True)
    assert quick.mode == "percentiles" and quick.latency_percentile == 0.0 and quick.memory_percentile == 1.0
    assert quick.tags == ["high_speed", "high_memory", "numerically_stable"]
    typical = c.characterize("cpu", "new-mid", latency_ms=5.5, memory_mb=14.5, drift=0.0, stable=False)
    assert typical.tags == ["medium_speed"]
    laggard = c.characterize("cpu", "new-slow", latency_ms=50.0, memory_mb=5.0, drift=0.0, stable=False)
    assert laggard.tags == ["low_speed", "low_memory"]


def test_a_remeasured_artifact_counts_once() -> None:
    c = Characterizer(min_population=2)
    c.record("cpu", "a", 1.0, 1.0, 0.0)
    c.record("cpu", "a", 2.0, 2.0, 0.0)
    assert c.population("cpu") == 1
    # with only itself in the population, a re-measurement of "a" still falls back to rules
    assert c.characterize("cpu", "a", 0.05, 0.5, 0.0, True).mode == "rules"
    assert c.population("cpu") == 1


def test_ties_sit_in_the_middle() -> None:
    c = Characterizer(min_population=4)
    for i in range(4):
        c.record("cpu", f"k{i}", 1.0, 1.0, 0.0)
    same = c.characterize("cpu", "x", 1.0, 1.0, 0.0, True)
    assert same.latency_percentile == 0.5 and same.tags == ["medium_speed", "numerically_stable"]


def test_quantiles_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="fast_quantile"):
        Characterizer(fast_quantile=0.8, slow_quantile=0.2)
