"""Shapes and formulas the control-plane services must agree on without importing each other.

Tamiyo and Narset each estimate kernel risk from a validation report, and both name unclaimed regions;
these tests fail the moment the copies drift. The coordinator's REST bodies are shared contracts.
"""

from __future__ import annotations

import esper_contracts
import esper_policy
from esper_narset_coordinator import aggregation
from esper_narset_coordinator import schemas as server
from esper_narset_worker import pricing as narset_pricing
from esper_tamiyo import domains
from esper_tamiyo import kernels as tamiyo_kernels

ART = esper_contracts.ArtifactId("a" * 64, "cpu", "eager", "b" * 12)


def test_coordinator_bodies_are_the_shared_contracts() -> None:
    # One definition, in esper_contracts: the coordinator serves exactly what the trainer side sends.
    for name in ["RegionSpec", "RegionRegistration", "Heartbeat", "WorkerQuota", "WorkerAssignment", "Assignment"]:
        assert getattr(server, name) is getattr(esper_contracts, name)


def test_tamiyo_and_narset_use_the_one_kernel_risk_estimate() -> None:
    assert tamiyo_kernels.kernel_risk is esper_policy.kernel_risk is narset_pricing.kernel_risk


def test_both_sides_call_unclaimed_regions_the_same() -> None:
    assert aggregation.UNASSIGNED_DOMAIN == domains.UNASSIGNED_DOMAIN
