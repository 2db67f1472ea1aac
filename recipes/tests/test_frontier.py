"""The frontier's arithmetic: interpolation on the static frontier (log parameters; compute along best accuracy)."""

from __future__ import annotations

import pytest

from esper_recipes.frontier import compute_at, frontier_at, mean_ci, wine

STATIC = [{"params": 100, "acc": 0.6, "compute": 1e4}, {"params": 1000, "acc": 0.8, "compute": 1e5},
          {"params": 10000, "acc": 0.78, "compute": 1e6}]


def test_the_static_frontier_is_interpolated_on_log_parameters() -> None:
    assert frontier_at(STATIC, 100) == pytest.approx(0.6)
    assert frontier_at(STATIC, 316.227766) == pytest.approx(0.7, abs=1e-6)
    assert frontier_at(STATIC, 50) == pytest.approx(0.6)  # below the narrowest: its accuracy


def test_compute_at_equal_accuracy_follows_the_best_so_far() -> None:
    assert compute_at(STATIC, 0.7) == pytest.approx(5.5e4)
    assert compute_at(STATIC, 0.79) == pytest.approx(compute_at(STATIC, 0.79))  # the worse wide model is skipped
    assert compute_at(STATIC, 0.9) == pytest.approx(1e5)


def test_mean_ci_and_the_bundled_third_task() -> None:
    m, lo, hi = mean_ci([1.0, 2.0, 3.0])
    assert lo < m == 2.0 < hi
    data = wine(0)
    assert data.num_features == 13 and data.num_classes == 3 and len(data.train) > 100
