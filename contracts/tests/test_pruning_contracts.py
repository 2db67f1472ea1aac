"""The removal contracts refuse what would be a lie: a plan over its allowance, a rejection that changed the model."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from esper_contracts import (
    ImportanceCriterion,
    ImportanceRequest,
    PrunableModule,
    PruneAction,
    PruneGranularity,
    PruneMode,
    PruningOutcome,
    PruningPlan,
    Topic,
    UnitStatistics,
    payload_model,
)


def test_a_plan_cannot_use_more_than_its_allowance() -> None:
    action = PruneAction(module_path="hidden.0", granularity=PruneGranularity.NEURON, indices=[1, 2])
    PruningPlan(epoch=3, importance_report_id="r", allowance=0.1, allowance_used=0.1, actions=[action])
    with pytest.raises(ValidationError, match="exceeds the allowance"):
        PruningPlan(epoch=3, importance_report_id="r", allowance=0.1, allowance_used=0.2, actions=[action])


def test_a_rejected_plan_leaves_the_parameter_count_alone() -> None:
    ok = PruningOutcome(plan_id="p", epoch=1, mode=PruneMode.LYSIS, accepted=False, reason="stale checkpoint",
                        parameters_before=100, parameters_after=100)
    assert ok.loss_change is None
    with pytest.raises(ValidationError, match="untouched"):
        PruningOutcome(plan_id="p", epoch=1, mode=PruneMode.LYSIS, accepted=False, reason="x",
                       parameters_before=100, parameters_after=90)
    cut = PruningOutcome(plan_id="p", epoch=1, mode=PruneMode.LYSIS, accepted=True, reason="cut",
                         parameters_before=100, parameters_after=90, loss_before=0.5, loss_after=0.625)
    assert cut.loss_change == pytest.approx(0.125)


def test_attention_modules_name_their_heads_and_only_they_do() -> None:
    PrunableModule(module_path="attn", kind="attention", num_heads=4)
    with pytest.raises(ValidationError, match="num_heads"):
        PrunableModule(module_path="attn", kind="attention")
    with pytest.raises(ValidationError, match="num_heads"):
        PrunableModule(module_path="fc", kind="linear", num_heads=2)


def test_statistics_are_data_aware_criteria_only() -> None:
    UnitStatistics(module_path="fc", criterion=ImportanceCriterion.TAYLOR, values=[0.1, 0.0])
    with pytest.raises(ValidationError):
        UnitStatistics(module_path="fc", criterion=ImportanceCriterion.MAGNITUDE, values=[0.1])
    with pytest.raises(ValidationError):
        UnitStatistics(module_path="fc", criterion=ImportanceCriterion.ACTIVATION, values=[-1.0])


def test_the_removal_topics_carry_the_removal_contracts() -> None:
    assert payload_model(Topic.IMPORTANCE_REQUESTS) is ImportanceRequest
    assert payload_model(Topic.PRUNING_PLANS) is PruningPlan
    assert payload_model(Topic.PRUNING_OUTCOMES) is PruningOutcome
