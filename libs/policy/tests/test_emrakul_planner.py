"""Emrakul's planner: never inside a zone or its ring, never over its allowance, the same plan from the same inputs."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from esper_contracts import (
    ImportanceCriterion,
    ImportanceReport,
    ImportanceScore,
    ProtectedZone,
    PruneGranularity,
    PruneMode,
)
from esper_policy.emrakul import EmrakulSettings, allowance_for, mode_for, plan_pruning

MODULES = ["blocks.0.fc", "blocks.1.fc", "blocks.2.fc", "conv", "head.proj"]


@st.composite
def reports(draw: st.DrawFn) -> ImportanceReport:
    """A report over some of MODULES, each with a few units and both a data-free and a data-aware score."""
    scores: list[ImportanceScore] = []
    modules = draw(st.lists(st.sampled_from(MODULES), min_size=1, max_size=len(MODULES), unique=True))
    for module in modules:
        n = draw(st.integers(1, 8))
        params = draw(st.integers(1, 200))
        for criterion in (ImportanceCriterion.MAGNITUDE, ImportanceCriterion.TAYLOR):
            for i in range(n):
                scores.append(ImportanceScore(
                    module_path=module, granularity=PruneGranularity.NEURON, index=i, criterion=criterion,
                    score=draw(st.floats(0, 3, allow_nan=False)), parameters=params,
                    diagnostic_only=draw(st.booleans()) and draw(st.booleans())))
    total = sum(s.parameters for s in scores if s.criterion == ImportanceCriterion.TAYLOR)
    return ImportanceReport(epoch=draw(st.integers(0, 20)), checkpoint_id="ck", scores=scores,
                            primary=ImportanceCriterion.TAYLOR, total_parameters=total + draw(st.integers(0, 500)))


@st.composite
def zone_lists(draw: st.DrawFn) -> list[ProtectedZone]:
    """Zones over globs of MODULES, some with rings, some expired."""
    zones = []
    for _ in range(draw(st.integers(0, 3))):
        created = draw(st.integers(0, 10))
        expires = draw(st.one_of(st.none(), st.integers(created, 25)))
        zones.append(ProtectedZone(
            module_patterns=[draw(st.sampled_from(["blocks.1.*", "conv", "head.*", "blocks.*", "nothing"]))],
            ring_patterns=draw(st.lists(st.sampled_from(["blocks.0.fc", "blocks.2.*", "conv"]), max_size=2)),
            reason="scaffold", created_epoch=created, expires_after_epoch=expires))
    return zones


intensities = st.floats(0, 1.5, allow_nan=False)
shares = st.floats(0, 1, allow_nan=False)


@settings(max_examples=30, deadline=None)
@given(reports(), zone_lists(), intensities, shares, st.booleans())
def test_never_inside_a_zone_or_its_ring(report: ImportanceReport, zones: list[ProtectedZone], x_E: float,
                                         share: float, safe: bool) -> None:
    plan = plan_pruning(report, zones, x_E, narset_spend_share=share, safe_boundary=safe)
    for action in plan.actions if plan else []:
        assert not any(z.covers(action.module_path, report.epoch) for z in zones), action
        named = {(s.module_path, s.index) for s in report.scores if s.diagnostic_only}
        assert not any((action.module_path, i) in named for i in action.indices)


@settings(max_examples=30, deadline=None)
@given(reports(), zone_lists(), intensities, shares, st.booleans())
def test_never_more_than_the_allowance(report: ImportanceReport, zones: list[ProtectedZone], x_E: float,
                                       share: float, safe: bool) -> None:
    plan = plan_pruning(report, zones, x_E, narset_spend_share=share, safe_boundary=safe)
    allowance = allowance_for(x_E, share, EmrakulSettings())
    if plan is None:
        return
    cost = {(s.module_path, s.index): s.parameters for s in report.scores if s.criterion == report.primary}
    named = sum(cost[a.module_path, i] for a in plan.actions for i in a.indices)
    assert named == plan.estimated_parameter_reduction <= allowance * report.total_parameters + 1e-6
    assert plan.allowance_used <= plan.allowance <= allowance + 1e-12
    units = {m: sum(1 for s in report.scores if s.module_path == m and s.criterion == report.primary)
             for m in {a.module_path for a in plan.actions}}
    assert all(len(a.indices) < units[a.module_path] for a in plan.actions), "a module lost all its units"


@settings(max_examples=20, deadline=None)
@given(reports(), zone_lists(), intensities, shares, st.booleans(), st.randoms(use_true_random=False))
def test_deterministic_and_replayable(report: ImportanceReport, zones: list[ProtectedZone], x_E: float,
                                      share: float, safe: bool, rng: random.Random) -> None:
    plan = plan_pruning(report, zones, x_E, narset_spend_share=share, safe_boundary=safe)
    replayed = ImportanceReport.model_validate_json(report.model_dump_json())
    again = plan_pruning(replayed, [z.model_copy() for z in zones], x_E, narset_spend_share=share, safe_boundary=safe)
    assert plan == again  # the id too: it is a content address of the inputs
    shuffled = report.model_copy(update={"scores": rng.sample(report.scores, len(report.scores))})
    other = plan_pruning(shuffled, list(reversed(zones)), x_E, narset_spend_share=share, safe_boundary=safe)
    assert (plan is None) == (other is None)
    if plan is not None and other is not None:
        assert plan.actions == other.actions and plan.mode == other.mode


@settings(max_examples=20, deadline=None)
@given(reports(), intensities, st.booleans())
def test_low_intensity_probes_only_and_lysis_needs_a_safe_boundary(report: ImportanceReport, x_E: float,
                                                                   safe: bool) -> None:
    plan = plan_pruning(report, [], x_E, safe_boundary=safe)
    if plan is not None and plan.mode == PruneMode.LYSIS:
        assert x_E >= EmrakulSettings().lysis_min and safe and plan.requires_safe_boundary
    if x_E < EmrakulSettings().probe_min:
        assert plan is None


def test_the_inverse_throttle() -> None:
    s = EmrakulSettings()
    assert allowance_for(1.0, 0.0, s) == s.max_fraction
    assert allowance_for(1.0, 0.5, s) < allowance_for(1.0, 0.1, s) < allowance_for(1.0, 0.0, s)
    assert allowance_for(1.0, 1.0, s) == 0.0  # Narset spends the whole pool: Emrakul stands down
    assert mode_for(0.5, safe_boundary=True, settings=s) == PruneMode.PROBE
    assert mode_for(0.9, safe_boundary=False, settings=s) == PruneMode.PROBE
    assert mode_for(0.9, safe_boundary=True, settings=s) == PruneMode.LYSIS


def test_the_least_important_units_go_first() -> None:
    scores = [ImportanceScore(module_path="fc", granularity=PruneGranularity.NEURON, index=i, score=v,
                              criterion=ImportanceCriterion.MAGNITUDE, parameters=10)
              for i, v in enumerate([0.9, 0.1, 2.0, 0.5, 0.3, 1.2])]
    report = ImportanceReport(epoch=4, checkpoint_id="ck", scores=scores, total_parameters=100)
    plan = plan_pruning(report, [], 1.0)
    assert plan is not None and plan.mode == PruneMode.LYSIS and plan.checkpoint_id == "ck"
    assert plan.actions[0].indices == [1, 3, 4]  # 30 parameters = 0.3 of 100; 0.1, 0.3, 0.5 first
