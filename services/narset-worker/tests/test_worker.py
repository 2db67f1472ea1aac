"""A Narset worker spends its regions' budgets: free moves, paid germinations, waiting, proposals, pricing."""

from __future__ import annotations

import pytest

from esper_contracts import (
    AllocationCommand,
    ArtifactId,
    CommandType,
    KasminaControlCommand,
    Outcome,
    SeedStage,
    SeedTelemetry,
    UrabraskValidationReport,
)
from esper_narset_worker.pricing import SlotGeometry, adaptation_cost, kernel_risk
from esper_narset_worker.summary import allocator_inputs, loss_trend, summarize_region
from esper_narset_worker.worker import Boundary, BudgetLedger, NarsetWorker, WorkerConfig

ART = ArtifactId("a" * 64, "cpu", "eager", "b" * 12)


def geometry() -> SlotGeometry:
    # fc1: four chunks of 8 features, fc2: one chunk of 32 -> 64 seeded features in all.
    return SlotGeometry({"fc1": (8, 8, 8, 8), "fc2": (32,)}, 64, lambda _kernel: None)


def seeds(layer: str, n: int, stage: SeedStage = SeedStage.DORMANT) -> list[SeedTelemetry]:
    return [SeedTelemetry(layer_id=layer, seed_index=i, epoch=1, stage=stage) for i in range(n)]


def germinate(layer: str, index: int) -> list[KasminaControlCommand]:
    return [KasminaControlCommand(layer_id=layer, seed_index=index, command=CommandType.GERMINATE,
                                  kernel_artifact_id=ART, blueprint_id="a" * 64),
            KasminaControlCommand(layer_id=layer, seed_index=index, command=CommandType.ADVANCE,
                                  target_stage=SeedStage.LOADING)]


def boundary(window: int, commands: dict[str, list[KasminaControlCommand]], rejected: dict[str, str] | None = None,
             trend: float = 0.0) -> Boundary:
    return Boundary(window=window, epoch=window, run_id="run", trend=trend, metric=0.5,
                    seeds={"fc1": seeds("fc1", 4), "fc2": seeds("fc2", 1)}, commands=commands,
                    rejected_proposals=rejected or {})


def ledger_with(budgets: dict[str, float], cycle: int) -> BudgetLedger:
    ledger = BudgetLedger()
    for region, atp in budgets.items():
        ledger.grant(AllocationCommand(cycle=cycle, region_id=region, domain_id="d", atp_budget=atp,
                                       energy_budget=1.5))
    return ledger


def warm_worker() -> NarsetWorker:
    """A worker whose regions have been stalled for a few windows (repair mode, growth permitted)."""
    worker = NarsetWorker("w0")
    worker.adopt("fc1")
    worker.adopt("fc2")
    ledger = ledger_with({"fc1": 0.0, "fc2": 0.0}, cycle=0)
    for w in range(3):
        worker.step(boundary(w, {}), ledger, geometry())
    return worker


def test_pricing_is_risk_times_disruption() -> None:
    g = geometry()
    assert g.disruption("fc1", 0) == pytest.approx(8 / 64) and g.disruption("fc2", 0) == pytest.approx(0.5)
    assert g.disruption("nowhere", 0) == 1.0  # unknown slots are priced as the whole graph
    assert adaptation_cost(0.5, 0.125, 100.0) == pytest.approx(6.25)
    assert kernel_risk(None) == 0.5
    ok = UrabraskValidationReport(artifact_id=ART, hardware="cpu", passed=True)
    noisy = UrabraskValidationReport(artifact_id=ART, hardware="cpu", passed=True, measurement_cv=0.2,
                                     precision_drift_vs_fp32=1e-3)
    bad = UrabraskValidationReport(artifact_id=ART, hardware="cpu", passed=False, rejection_reason="nan")
    assert kernel_risk(ok) == pytest.approx(0.2) and kernel_risk(noisy) == 1.0 and kernel_risk(bad) == 1.0


def test_summary_and_inputs_are_constant_size() -> None:
    many = seeds("fc1", 500) + seeds("fc1", 3, SeedStage.CULLED)
    report = summarize_region("fc1", "d", many, window=2, epoch=2, trend=0.01, budget_spent=3.0)
    assert report.seed_count == 503 and report.stage_counts[SeedStage.CULLED] == 3 and report.source_reports == 0
    inputs = allocator_inputs(many, trend=-0.02)
    assert inputs.progress == 1.0 and 0.9 < inputs.stability < 1.0
    assert loss_trend(None, 1.0) == 0.0 and loss_trend(2.0, 1.0) == -0.5


def test_free_moves_pass_and_germinations_are_paid() -> None:
    worker = warm_worker()
    ledger = ledger_with({"fc1": 10.0, "fc2": 0.0}, cycle=3)
    cull = KasminaControlCommand(layer_id="fc2", seed_index=0, command=CommandType.CULL)
    out = worker.step(boundary(3, {"fc1": germinate("fc1", 1), "fc2": [cull]}), ledger, geometry())
    assert [c.command for c in out.commands] == [CommandType.GERMINATE, CommandType.ADVANCE, CommandType.CULL]
    assert out.spent == pytest.approx(6.25) and ledger.balance("fc1") == pytest.approx(3.75)
    assert not out.proposals and out.waiting == 0
    assert {r.region_id for r in out.reports} == {"fc1", "fc2"} and len(out.decisions) == 2
    fc1 = next(r for r in out.reports if r.region_id == "fc1")
    assert fc1.budget_spent == pytest.approx(6.25) and fc1.domain_id == "d"


def test_short_budget_waits_files_a_proposal_and_goes_through_once_funded() -> None:
    worker = warm_worker()
    out = worker.step(boundary(3, {"fc2": germinate("fc2", 0)}), ledger_with({"fc1": 1.0, "fc2": 20.0}, 3),
                      geometry())
    # fc2's only seed covers half the graph: 0.5 x 0.5 x 100 = 25 ATP > 20 ATP.
    assert out.commands == [] and out.waiting == 1
    (sop,) = out.proposals
    assert sop.region_id == "fc2" and sop.ask == pytest.approx(5.0 * WorkerConfig().proposal_margin)
    assert sop.expected_roi > 0 and sop.submitted_by == "w0"
    # Next cycle the allocation includes the grant: the waiting bundle (GERMINATE + LOADING) goes first.
    later = worker.step(boundary(4, {}), ledger_with({"fc1": 1.0, "fc2": 26.0}, 4), geometry())
    assert [c.command for c in later.commands] == [CommandType.GERMINATE, CommandType.ADVANCE]
    assert later.proposals == [] and later.waiting == 0


def test_rejected_proposal_drops_the_germination_and_reports_it_cancelled() -> None:
    worker = warm_worker()
    out = worker.step(boundary(3, {"fc2": germinate("fc2", 0)}), ledger_with({"fc2": 1.0}, 3), geometry())
    (sop,) = out.proposals
    later = worker.step(boundary(4, {}, rejected={sop.proposal_id: "no capacity"}), ledger_with({"fc2": 1.0}, 4),
                        geometry())
    assert later.commands == [] and later.waiting == 0
    (report,) = later.cancelled
    assert report.outcome is Outcome.CANCELLED and report.seed_id == "fc2[0]"


def test_waiting_expires_after_hold_cycles() -> None:
    worker = warm_worker()
    worker.config = WorkerConfig(hold_cycles=2)
    worker.step(boundary(3, {"fc2": germinate("fc2", 0)}), ledger_with({"fc2": 0.0}, 3), geometry())
    assert worker.step(boundary(4, {}), ledger_with({"fc2": 0.0}, 4), geometry()).cancelled == []
    assert len(worker.step(boundary(5, {}), ledger_with({"fc2": 0.0}, 5), geometry()).cancelled) == 1


def test_growth_needs_intensity_even_with_money() -> None:
    worker = NarsetWorker("w0")
    worker.adopt("fc1")
    # A region improving fast stays in consolidation with a low growth intensity.
    out = worker.step(boundary(0, {"fc1": germinate("fc1", 0)}, trend=-0.05), ledger_with({"fc1": 100.0}, 0),
                      geometry())
    assert out.commands == [] and out.waiting == 1 and out.proposals == []


def test_state_round_trip_keeps_waiting_bundles() -> None:
    worker = warm_worker()
    worker.step(boundary(3, {"fc2": germinate("fc2", 0)}), ledger_with({"fc2": 0.0}, 3), geometry())
    clone = NarsetWorker("w0")
    clone.load_state_dict(worker.state_dict())
    assert clone.state_dict() == worker.state_dict()
    assert clone.release("fc2") is not None and "fc2[0]" not in clone.waiting


def test_ledger_never_spends_past_the_allocation_nor_goes_back_a_cycle() -> None:
    ledger = ledger_with({"r": 5.0}, cycle=2)
    assert ledger.try_spend("r", 3.0) and not ledger.try_spend("r", 3.0) and ledger.try_spend("r", 2.0)
    ledger.grant(AllocationCommand(cycle=1, region_id="r", atp_budget=100.0))  # stale: ignored
    assert ledger.balance("r") == 0.0
    ledger.grant(AllocationCommand(cycle=3, region_id="r", atp_budget=4.0))
    assert ledger.balance("r") == 4.0 and not ledger.try_spend("unknown", 0.1)
