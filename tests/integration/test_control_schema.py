"""Shapes and formulas the control-plane services must agree on without importing each other.

Tamiyo and Narset each estimate kernel risk from a validation report, and both name unclaimed regions;
these tests fail the moment the copies drift. The coordinator's REST bodies are shared contracts.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

import esper_contracts
from esper_contracts import UrabraskValidationReport
from esper_narset_coordinator import aggregation
from esper_narset_coordinator import schemas as server
from esper_narset_worker.pricing import kernel_risk as narset_risk
from esper_tamiyo import domains
from esper_tamiyo.kernels import kernel_risk as tamiyo_risk

ART = "a" * 64 + "-cpu-eager-" + "b" * 12


def test_coordinator_bodies_are_the_shared_contracts() -> None:
    # One definition, in esper_contracts: the coordinator serves exactly what the trainer side sends.
    for name in ["RegionSpec", "RegionRegistration", "Heartbeat", "WorkerQuota", "WorkerAssignment", "Assignment"]:
        assert getattr(server, name) is getattr(esper_contracts, name)


@settings(max_examples=200, deadline=None)
@given(passed=st.booleans(), drift=st.floats(0, 1e-2), cv=st.floats(0, 1), default=st.floats(0, 1))
def test_tamiyo_and_narset_estimate_the_same_kernel_risk(passed: bool, drift: float, cv: float, default: float) -> None:
    report = UrabraskValidationReport(artifact_id=ART, hardware="cpu", passed=passed, precision_drift_vs_fp32=drift,
                                      measurement_cv=cv, rejection_reason=None if passed else "failed")
    assert tamiyo_risk(report) == narset_risk(report)
    assert tamiyo_risk(None, default) == narset_risk(None, default)


def test_both_sides_call_unclaimed_regions_the_same() -> None:
    assert aggregation.UNASSIGNED_DOMAIN == domains.UNASSIGNED_DOMAIN
