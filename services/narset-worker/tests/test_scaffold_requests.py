"""Narset and scaffolds: windowed stability feeds the allocator, a region that stays unstable asks for a scaffold,
and a protected zone (with its embargo ring) stops every germination but the zone's own scaffold."""

from __future__ import annotations

from esper_contracts import (
    AllocationCommand,
    ArtifactId,
    CommandType,
    KasminaControlCommand,
    Outcome,
    ProtectedZone,
    SeedStage,
    SeedTelemetry,
)
from esper_narset_worker.pricing import SlotGeometry
from esper_narset_worker.summary import allocator_inputs
from esper_narset_worker.worker import Boundary, BudgetLedger, NarsetWorker, WorkerConfig
from esper_policy.scaffolds import SCAFFOLD_TAG

ART = ArtifactId("a" * 64, "cpu", "eager", "b" * 12)
REGIONS = ("fc0", "fc1", "fc2")


def geometry() -> SlotGeometry:
    return SlotGeometry({r: (8, 8) for r in REGIONS}, 48, lambda _kernel: None)


def ledger() -> BudgetLedger:
    book = BudgetLedger()
    for r in REGIONS:
        book.grant(AllocationCommand(cycle=0, region_id=r, domain_id="d", atp_budget=1000.0, energy_budget=1.5))
    return book


def boundary(epoch: int, loss: float, *, rolled_back: bool = False, zones: tuple[ProtectedZone, ...] = (),
             commands: dict[str, list[KasminaControlCommand]] | None = None) -> Boundary:
    seeds = {r: [SeedTelemetry(layer_id=r, seed_index=i, epoch=epoch, stage=SeedStage.DORMANT) for i in range(2)]
             for r in REGIONS}
    return Boundary(window=epoch, epoch=epoch, run_id="run", trend=0.0, metric=0.5, seeds=seeds,
                    commands=commands or {}, val_loss=loss, rolled_back=rolled_back, zones=zones)


def germinate(layer: str, index: int, tags: list[str] | None = None) -> KasminaControlCommand:
    return KasminaControlCommand(layer_id=layer, seed_index=index, command=CommandType.GERMINATE,
                                 kernel_artifact_id=ART, selected_for_tags=tags or [])


def test_windowed_stability_caps_the_allocator_input() -> None:
    calm = allocator_inputs([], 0.0)
    assert calm.stability == 1.0
    assert allocator_inputs([], 0.0, windowed=0.3).stability == 0.3


def test_a_single_spike_files_nothing_a_persistent_crisis_files_one_request() -> None:
    worker = NarsetWorker("w0", WorkerConfig(scaffold_after_windows=3))
    for r in REGIONS:
        worker.adopt(r)
    book, g = ledger(), geometry()
    losses = [1.0, 0.9, 0.85, 5.0, 0.8, 0.78]  # one bad window, then calm: no scaffold
    for epoch, loss in enumerate(losses):
        out = worker.step(boundary(epoch, loss), book, g)
        assert out.scaffold_requests == []
    requests = []
    stability = []
    for epoch, loss in enumerate([4.0, 9.0, 3.5, 8.0, 4.2, 7.5], start=len(losses)):  # spiking, jittery, rolling back
        out = worker.step(boundary(epoch, loss, rolled_back=epoch % 2 == 0), book, g)
        requests += out.scaffold_requests
        stability.append(out.decisions[0].raw_inputs.stability)
    assert min(stability) < 0.5  # the allocator saw the crisis
    assert sorted(r.region_id for r in requests) == list(REGIONS)  # one per region, not one per window
    assert all(r.emergency and r.blueprint_id == "scaffold_mlp" and "rollback rate" in r.reason for r in requests)
    assert worker.state_dict()["scaffold_requested"].keys() == set(REGIONS)


def test_the_ring_holds_against_narset_but_lets_the_scaffold_in() -> None:
    worker = NarsetWorker("w0")
    for r in REGIONS:
        worker.adopt(r)
    zone = ProtectedZone(zone_id="scaffold-s1", module_patterns=["fc1"], ring_patterns=["fc0", "fc2"],
                         reason="scaffold", scaffold_id="s1", created_epoch=1)
    commands = {"fc0": [germinate("fc0", 0)], "fc1": [germinate("fc1", 1, [SCAFFOLD_TAG, "scaffold_mlp"])],
                "fc2": [germinate("fc2", 1)]}
    out = worker.step(boundary(2, 1.0, zones=(zone,), commands=commands), ledger(), geometry())
    assert [c.seed_id for c in out.commands] == ["fc1[1]"]  # the scaffold passes, free
    assert out.spent == 0.0
    assert sorted(r.seed_id for r in out.cancelled) == ["fc0[0]", "fc2[1]"]
    assert all(r.outcome is Outcome.CANCELLED for r in out.cancelled)
    # One clean checkpoint after the sunset the zone is re-published with its expiry: growth is allowed again.
    lifted = zone.model_copy(update={"expires_after_epoch": 5})
    out = worker.step(boundary(6, 1.0, zones=(lifted,), commands={"fc0": [germinate("fc0", 0)]}), ledger(),
                      geometry())
    assert out.cancelled == []
