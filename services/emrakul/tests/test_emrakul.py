"""Emrakul as a service on a memory bus: reports become plans within x_E, never in a zone; no x_E, no plan."""

from __future__ import annotations

from fastapi.testclient import TestClient

from esper_contracts import (
    AllocatorInputs,
    ControlMode,
    ImportanceCriterion,
    ImportanceReport,
    ImportanceScore,
    NarsetAllocationDecision,
    ProtectedZone,
    PruneGranularity,
    PruneMode,
    PruningOutcome,
    PruningPlan,
    Topic,
)
from esper_emrakul.service import create_service
from esper_oona import connect
from esper_oona.testing import Collector, wait_for


def _report(epoch: int = 5) -> ImportanceReport:
    scores = [ImportanceScore(module_path=m, granularity=PruneGranularity.NEURON, index=i, score=0.1 * (i + 1),
                              criterion=ImportanceCriterion.MAGNITUDE, parameters=10)
              for m in ("body.0", "body.1") for i in range(8)]
    return ImportanceReport(run_id="r1", epoch=epoch, checkpoint_id="ck", scores=scores, total_parameters=400)


def _allocation(x_E: float, c_T: float, window: int) -> NarsetAllocationDecision:
    inputs = AllocatorInputs(progress=0.0, stability=1.0, efficiency=0.5)
    return NarsetAllocationDecision(region_id="host", window=window, mode=ControlMode.CONSOLIDATION, x_T=c_T,
                                    x_E=x_E, c_T=c_T, c_E=x_E, pool=1.5, total_spent=c_T + x_E,
                                    raw_inputs=inputs, smoothed_inputs=inputs)


def test_reports_become_plans_within_the_allowance_and_outside_zones(memory_bus_url: str) -> None:
    service = create_service(bus_url=memory_bus_url, port=0)
    bus = connect(memory_bus_url, producer_name="tamiyo")
    plans = Collector(bus, Topic.PRUNING_PLANS)
    with TestClient(service.app) as client:
        bus.publish(Topic.IMPORTANCE, _report(), key="r1")  # no allocation yet: x_E = 0, no plan
        bus.flush()
        wait_for(lambda: service.planner.skipped == 1, what="the report without allocation")
        bus.publish(Topic.PROTECTED_ZONES, ProtectedZone(module_patterns=["body.1"], reason="scaffold",
                                                        created_epoch=0))
        bus.publish(Topic.NARSET_ALLOCATIONS, _allocation(0.3, 0.2, window=1))
        bus.flush()
        wait_for(lambda: bool(service.planner.allocations and service.planner.zones), what="zone and allocation")
        bus.publish(Topic.IMPORTANCE, _report(), key="r1")
        bus.flush()
        probe: PruningPlan = plans.wait_for(1, timeout_s=10)[0]
        assert probe.mode == PruneMode.PROBE and probe.run_id == "r1" and probe.checkpoint_id == "ck"
        assert {a.module_path for a in probe.actions} == {"body.0"}
        assert probe.estimated_parameter_reduction <= probe.allowance * 400
        bus.publish(Topic.NARSET_ALLOCATIONS, _allocation(1.0, 0.0, window=2))
        bus.flush()
        wait_for(lambda: service.planner.allocations["host"].window == 2, what="the new allocation")
        bus.publish(Topic.IMPORTANCE, _report(6), key="r1")
        bus.publish_raw(Topic.IMPORTANCE, b"garbage")
        bus.flush()
        lysis: PruningPlan = plans.wait_for(2, timeout_s=10)[1]
        assert lysis.mode == PruneMode.LYSIS and lysis.allowance > probe.allowance
        assert {a.module_path for a in lysis.actions} == {"body.0"}
        bus.publish(Topic.PRUNING_OUTCOMES, PruningOutcome(plan_id=lysis.plan_id, run_id="r1", epoch=6,
                                                           mode=PruneMode.LYSIS, accepted=True, reason="cut"))
        bus.flush()
        wait_for(lambda: client.get("/api/v1/status").json()["applied"] == 1, what="the outcome")
        status = client.get("/api/v1/status").json()
        assert status["plans"] == 2 and status["zones"] == 1
        dead = bus.read_dead_letters(Topic.IMPORTANCE, timeout_s=5)
        assert len(dead) == 1 and dead[0].data == b"garbage"
    bus.close()
