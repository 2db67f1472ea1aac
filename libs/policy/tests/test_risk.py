"""The kernel-risk estimate Tamiyo filters by and Narset prices with."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from esper_contracts import ArtifactId, UrabraskValidationReport
from esper_policy import kernel_risk

ART = ArtifactId("a" * 64, "cpu", "eager", "b" * 12)


def report(passed: bool = True, drift: float = 0.0, cv: float = 0.0) -> UrabraskValidationReport:
    return UrabraskValidationReport(artifact_id=ART, hardware="cpu", passed=passed, precision_drift_vs_fp32=drift,
                                    measurement_cv=cv, rejection_reason=None if passed else "failed")


def test_anchor_values() -> None:
    assert kernel_risk(None) == 0.5 and kernel_risk(None, 0.3) == 0.3
    assert kernel_risk(report()) == 0.2  # clean validation: the base risk of changing the network
    assert kernel_risk(report(passed=False)) == 1.0
    assert kernel_risk(report(drift=1.0, cv=1.0)) == 1.0


@settings(max_examples=200, deadline=None)
@given(drift=st.floats(0, 1e-2), cv=st.floats(0, 1), more=st.floats(0, 1e-2))
def test_in_unit_range_and_monotone_in_drift_and_spread(drift: float, cv: float, more: float) -> None:
    base = kernel_risk(report(drift=drift, cv=cv))
    assert 0.2 <= base <= 1.0
    assert kernel_risk(report(drift=drift + more, cv=cv)) >= base
    assert kernel_risk(report(drift=drift, cv=min(1.0, cv + more))) >= base
