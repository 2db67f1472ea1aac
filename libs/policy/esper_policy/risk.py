"""How risky a kernel is, from its Urabrask validation report.

Tamiyo filters kernels by it and Narset prices adaptations with it (cost = risk × disruption), so the
estimate lives here, in the one library both import.
"""

from __future__ import annotations

from esper_contracts import UrabraskValidationReport

DEFAULT_RISK = 0.5  # no report yet: neither trusted nor condemned
BASE_RISK = 0.2  # a kernel that validated cleanly still changes the network
DRIFT_AT_FULL_RISK = 1e-3  # precision drift vs fp32 that adds the whole drift term (0.4)
CV_AT_FULL_RISK = 0.2  # measurement coefficient of variation that adds the whole variability term (0.4)


def kernel_risk(report: UrabraskValidationReport | None, default: float = DEFAULT_RISK) -> float:
    """Risk in [0, 1]: ``default`` without a report, 1 for a failed one, else base + drift + spread terms."""
    if report is None:
        return default
    if not report.passed:
        return 1.0
    drift = min(1.0, report.precision_drift_vs_fp32 / DRIFT_AT_FULL_RISK)
    spread = min(1.0, report.measurement_cv / CV_AT_FULL_RISK)
    return min(1.0, BASE_RISK + 0.4 * drift + 0.4 * spread)
