"""NarsetHost on a memory bus: what one boundary publishes, Tamiyo's allocations and proposal decisions,
spend accounting, a crashed worker, its checkpointed state, and bad input.

Tamiyo is played by a script on the same bus: it answers every SystemStatePacket with this cycle's
allocations and then an AdaptationSignal carrying the commands the test gives it, as the service does.
No coordinator service: the host's LocalCoordinator keeps one worker (``local-0``) for every region.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from torch import nn

import esper
from esper.kasmina import KasminaConfig
from esper_contracts import (
    AdaptationSignal,
    AllocationCommand,
    CommandType,
    Envelope,
    FieldReport,
    KasminaControlCommand,
    Outcome,
    ProposalDecision,
    SeedStage,
    SeedTelemetry,
    StrategicOpportunityProposal,
    SystemStatePacket,
    Topic,
)
from esper_narset_worker import HostConfig, NarsetHost, WorkerConfig, replay
from esper_oona import REASON_MALFORMED, Bus, connect
from esper_oona.testing import Collector, wait_for

ART = "a" * 64 + "-cpu-eager-" + "b" * 12
RUN = "run-1"
#: The Kasmina layers of the model below (Sequential indices): chunk widths 8+8, 8+8 and 1+1, 34 features in all.
REGIONS = ("0", "2", "4")
#: A germination of a width-8 chunk with an unvalidated kernel: default risk x disruption x ATP per disruption.
PRICE = WorkerConfig().default_risk * 8 / 34 * WorkerConfig().atp_per_full_disruption


class ScriptedTamiyo:
    """Answers each packet like the Tamiyo service: allocations for the packet's cycle, then the signal."""

    def __init__(self, url: str) -> None:
        self.bus = connect(url, producer_name="tamiyo")
        self.budgets: dict[str, float] = dict.fromkeys(REGIONS, 20.0)
        self.commands: dict[int, list[KasminaControlCommand]] = {}  # epoch -> commands to send
        self.silent = False
        self.packets: list[Envelope[Any]] = []
        self.bus.subscribe(Topic.SYSTEM_STATE, "tamiyo", self._answer)

    def _answer(self, envelope: Envelope[Any]) -> None:
        self.packets.append(envelope)
        if self.silent:
            return
        packet: SystemStatePacket = envelope.payload
        for region, atp in self.budgets.items():
            grant = AllocationCommand(cycle=packet.epoch, region_id=region, domain_id="hidden", atp_budget=atp,
                                      energy_budget=1.5)
            self.bus.publish(Topic.BUDGET_ALLOCATIONS, grant, key=region)
        signal = AdaptationSignal(epoch=packet.epoch, commands=self.commands.get(packet.epoch, []),
                                  optimizer_rebuild_required=bool(self.commands.get(packet.epoch)), reason="scripted")
        self.bus.publish(Topic.ADAPTATION_SIGNALS, signal, key=packet.run_id, parent=envelope)

    def decide_proposal(self, proposal: StrategicOpportunityProposal, approved: bool) -> ProposalDecision:
        decision = ProposalDecision(proposal_id=proposal.proposal_id, region_id=proposal.region_id, approved=approved,
                                    granted=proposal.ask if approved else 0.0,
                                    reason="funded from the reserve" if approved else "no reserve left")
        self.bus.publish(Topic.PROPOSAL_DECISIONS, decision, key=proposal.region_id)
        return decision


@pytest.fixture
def tamiyo(memory_bus_url: str) -> Iterator[ScriptedTamiyo]:
    script = ScriptedTamiyo(memory_bus_url)
    yield script
    script.bus.close()


@pytest.fixture
def trainer_bus(memory_bus_url: str) -> Iterator[Bus]:
    bus = connect(memory_bus_url, producer_name="trainer")
    yield bus
    bus.close()


def make_host(bus: Bus, **config: Any) -> NarsetHost:
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    model = esper.wrap(model, KasminaConfig(chunks_per_layer=2, include_head=True), kernels=esper.LocalKernelLibrary())
    options: dict[str, Any] = {"decision_timeout_s": 5.0, "allocation_wait_s": 2.0, "heartbeat_interval_s": None}
    return NarsetHost(model, bus, config=HostConfig(**(options | config)))


@pytest.fixture
def host(trainer_bus: Bus, tamiyo: ScriptedTamiyo) -> Iterator[NarsetHost]:
    narset = make_host(trainer_bus)
    yield narset
    narset.close()


def packet(epoch: int, stages: dict[str, SeedStage] | None = None) -> SystemStatePacket:
    """A flat-loss heartbeat (a stalled run, where the allocator permits growth) with every seed's telemetry."""
    stages = stages or {}
    seeds = [SeedTelemetry(layer_id=layer, seed_index=i, epoch=epoch,
                           stage=stages.get(f"{layer}[{i}]", SeedStage.DORMANT))
             for layer in REGIONS for i in range(2)]
    return SystemStatePacket(run_id=RUN, epoch=epoch, train_loss=1.0, val_loss=1.0, val_accuracy=0.5, seeds=seeds)


def germinate(layer: str, index: int) -> list[KasminaControlCommand]:
    """What Tamiyo sends for one germination: GERMINATE, then the move to LOADING."""
    return [KasminaControlCommand(layer_id=layer, seed_index=index, command=CommandType.GERMINATE,
                                  kernel_artifact_id=ART, blueprint_id="a" * 64),
            KasminaControlCommand(layer_id=layer, seed_index=index, command=CommandType.ADVANCE,
                                  target_stage=SeedStage.LOADING)]


def stall(host: NarsetHost, epochs: int = 3) -> None:
    """Boundaries without commands until the allocator sees a stalled run and permits growth."""
    for epoch in range(1, epochs + 1):
        assert host.decide(packet(epoch)).commands == []


def kinds(signal: AdaptationSignal) -> list[tuple[str, CommandType]]:
    return [(f"{c.layer_id}[{c.seed_index}]", c.command) for c in signal.commands]


# ------------------------------------------------------------------------------------------ one boundary


def test_a_boundary_asks_tamiyo_then_publishes_every_regions_decision_and_health(
        host: NarsetHost, trainer_bus: Bus, tamiyo: ScriptedTamiyo) -> None:
    states, decisions, summaries, proposals = (Collector(trainer_bus, t) for t in (
        Topic.SYSTEM_STATE, Topic.NARSET_ALLOCATIONS, Topic.HEALTH_SUMMARIES, Topic.PROPOSALS))
    sent = packet(1)
    signal = host.decide(sent)

    assert signal.epoch == 1 and signal.commands == [] and signal.reason == "scripted"
    (heartbeat,) = tamiyo.packets
    # Tamiyo reads a summary: every seed here (a region's best candidates are all of its two), plus the counts.
    summary = sent.model_copy(update={"seeds_per_region": dict.fromkeys(REGIONS, 2)})
    assert heartbeat.payload == summary and heartbeat.producer == "trainer"
    assert [e.payload for e in states.wait_received(1)] == [summary]
    allocated = decisions.wait_for(3)
    assert sorted(d.region_id for d in allocated) == list(REGIONS) and {d.window for d in allocated} == {1}
    # Without a coordinator there is no telemetry tree: region reports go straight to Tamiyo.
    health = summaries.wait_for(3)
    assert sorted(r.region_id for r in health) == list(REGIONS)
    assert all(r.seed_count == 2 and r.budget_spent == 0.0 and r.domain_id == "hidden" for r in health)
    assert proposals.wait_for(1, timeout_s=0.2) == []
    assert host.owner == dict.fromkeys(REGIONS, "local-0") and host.spent_total == 0.0


def test_free_commands_pass_and_a_germination_is_paid_from_its_regions_allocation(
        host: NarsetHost, trainer_bus: Bus, tamiyo: ScriptedTamiyo) -> None:
    stall(host)
    summaries = Collector(trainer_bus, Topic.HEALTH_SUMMARIES)
    cull = KasminaControlCommand(layer_id="2", seed_index=1, command=CommandType.CULL)
    elsewhere = KasminaControlCommand(layer_id="99", seed_index=0, command=CommandType.CULL)
    tamiyo.commands[4] = [*germinate("0", 0), cull, elsewhere]

    signal = host.decide(packet(4, {"2[1]": SeedStage.TRAINING}))

    # Tamiyo's order is kept; a slot no worker owns passes unchanged (Kasmina refuses it with a reason).
    assert kinds(signal) == [("0[0]", CommandType.GERMINATE), ("0[0]", CommandType.ADVANCE),
                             ("2[1]", CommandType.CULL), ("99[0]", CommandType.CULL)]
    assert signal.optimizer_rebuild_required and signal.reason == "scripted"
    assert host.spent_total == pytest.approx(PRICE)
    assert host.ledger.spent_this_cycle("0") == pytest.approx(PRICE)
    assert host.ledger.balance("0") == pytest.approx(20.0 - PRICE) and host.ledger.balance("2") == 20.0
    wait_for(lambda: any(r.window == 4 for r in summaries.payloads), what="the reports of window 4")
    region0 = next(r for r in summaries.payloads if r.window == 4 and r.region_id == "0")
    assert region0.budget_spent == pytest.approx(PRICE)

    # The next cycle's allocation starts afresh; the host's total keeps counting.
    tamiyo.commands[5] = germinate("0", 1)
    assert kinds(host.decide(packet(5, {"0[0]": SeedStage.LOADING}))) == [
        ("0[1]", CommandType.GERMINATE), ("0[1]", CommandType.ADVANCE)]
    assert host.spent_total == pytest.approx(2 * PRICE)
    assert host.ledger.allocation("0") is not None and host.ledger.allocation("0").cycle == 5  # type: ignore[union-attr]
    assert host.ledger.spent_this_cycle("0") == pytest.approx(PRICE)


# ------------------------------------------------------------------------------------------ proposals


def test_a_short_allocation_holds_the_germination_until_tamiyo_funds_its_proposal(
        host: NarsetHost, trainer_bus: Bus, tamiyo: ScriptedTamiyo) -> None:
    stall(host)
    proposals = Collector(trainer_bus, Topic.PROPOSALS)
    tamiyo.budgets["0"] = 10.0  # less than PRICE
    tamiyo.commands[4] = germinate("0", 0)

    held = host.decide(packet(4))
    assert held.commands == [] and "narset: 1 germination(s) waiting for budget" in held.reason
    assert host.spent_total == 0.0
    (sop,) = proposals.wait_for(1)
    assert sop.region_id == "0" and sop.submitted_by == "local-0"
    assert sop.ask == pytest.approx((PRICE - 10.0) * WorkerConfig().proposal_margin)

    decision = tamiyo.decide_proposal(sop, approved=True)
    wait_for(lambda: host.proposal_decisions() == [decision], what="Tamiyo's decision to reach the host")
    tamiyo.budgets["0"] = 10.0 + decision.granted  # the grant arrives with the next cycle's allocation
    funded = host.decide(packet(5))
    assert kinds(funded) == [("0[0]", CommandType.GERMINATE), ("0[0]", CommandType.ADVANCE)]
    assert "waiting" not in funded.reason and host.spent_total == pytest.approx(PRICE)
    assert proposals.wait_for(2, timeout_s=0.2) == [sop]  # one proposal per germination, not one per boundary


def test_a_rejected_proposal_drops_the_germination_and_reports_it_cancelled(
        host: NarsetHost, trainer_bus: Bus, tamiyo: ScriptedTamiyo) -> None:
    stall(host)
    proposals = Collector(trainer_bus, Topic.PROPOSALS)
    reports = Collector(trainer_bus, Topic.FIELD_REPORTS)
    tamiyo.budgets["0"] = 10.0
    tamiyo.commands[4] = germinate("0", 0)
    host.decide(packet(4))
    (sop,) = proposals.wait_for(1)

    tamiyo.decide_proposal(sop, approved=False)
    wait_for(lambda: len(host.proposal_decisions()) == 1, what="the rejection to reach the host")
    dropped = host.decide(packet(5))

    assert dropped.commands == [] and "waiting" not in dropped.reason and host.spent_total == 0.0
    (envelope,) = reports.wait_received(1)
    report: FieldReport = envelope.payload
    assert report.outcome is Outcome.CANCELLED and report.seed_id == "0[0]" and report.run_id == RUN
    assert envelope.producer == "trainer"
    assert host.drain_field_reports() == []  # its own report, echoed back, is not news to the host


# ------------------------------------------------------------------------------------------ allocations


def test_allocations_for_other_regions_and_older_cycles_do_not_change_the_ledger(
        host: NarsetHost, tamiyo: ScriptedTamiyo) -> None:
    def grant(cycle: int, region: str, atp: float) -> None:
        tamiyo.bus.publish(Topic.BUDGET_ALLOCATIONS, AllocationCommand(cycle=cycle, region_id=region,
                                                                       atp_budget=atp), key=region)

    grant(3, "0", 7.0)
    grant(3, "ghost", 50.0)  # a region of another trainer on the same bus
    grant(2, "0", 100.0)  # redelivered or reordered: older than what the host holds
    grant(3, "2", 1.0)  # one subscription delivers in order: once this is in, so are the others
    wait_for(lambda: host.ledger.allocation("2") is not None, what="the allocations to arrive")

    current = host.ledger.allocation("0")
    assert current is not None and (current.cycle, current.atp_budget) == (3, 7.0)
    assert "ghost" not in host.ledger.allocations


def test_a_boundary_spends_from_the_previous_cycle_when_this_cycles_allocations_are_late(
        trainer_bus: Bus, tamiyo: ScriptedTamiyo) -> None:
    host = make_host(trainer_bus, allocation_wait_s=0.2)
    try:
        stall(host)
        tamiyo.budgets = {}  # from now on Tamiyo answers without allocations
        tamiyo.commands[4] = germinate("0", 0)
        started = time.monotonic()
        signal = host.decide(packet(4))
        assert time.monotonic() - started >= 0.2  # it waited for them, then went on
        assert kinds(signal)[0] == ("0[0]", CommandType.GERMINATE)  # paid from cycle 3's 20 ATP
        assert host.ledger.allocation("0").cycle == 3  # type: ignore[union-attr]
        assert host.ledger.balance("0") == pytest.approx(20.0 - PRICE)
    finally:
        host.close()


# ------------------------------------------------------------------------------------------ Tamiyo silent or late


def test_without_an_answer_in_time_nothing_changes_and_a_late_answer_is_never_reused(
        trainer_bus: Bus, tamiyo: ScriptedTamiyo) -> None:
    host = make_host(trainer_bus, decision_timeout_s=0.3)
    try:
        decisions = Collector(trainer_bus, Topic.NARSET_ALLOCATIONS)
        tamiyo.silent = True
        signal = host.decide(packet(1))
        assert signal == AdaptationSignal(epoch=1, reason="no answer from Tamiyo in time: no change")
        assert decisions.wait_for(1, timeout_s=0.2) == []  # no workers ran: nothing was decided

        # Tamiyo's answer to epoch 1 arrives after the host gave up on it; epoch 2 must get its own.
        wait_for(lambda: len(tamiyo.packets) == 1, what="Tamiyo to see the packet")
        (first,) = tamiyo.packets
        tamiyo.bus.publish(Topic.ADAPTATION_SIGNALS, AdaptationSignal(epoch=1, commands=germinate("0", 0)),
                           key=RUN, parent=first)
        tamiyo.silent = False
        second = host.decide(packet(2))
        assert second.epoch == 2 and second.commands == [] and second.reason == "scripted"
    finally:
        host.close()


# ------------------------------------------------------------------------------------------ field reports


def test_field_reports_of_this_run_are_drained_and_outcomes_go_to_tamiyo(
        host: NarsetHost, trainer_bus: Bus, tamiyo: ScriptedTamiyo) -> None:
    host.decide(packet(1))  # the host learns its run id from the packet

    def report(run_id: str, seed: str, outcome: Outcome) -> FieldReport:
        return FieldReport(blueprint_id="a" * 64, seed_id=seed, run_id=run_id, pre_metric=0.5, post_metric=0.6,
                           outcome=outcome, epochs_active=3)

    ours, theirs = report(RUN, "0[0]", Outcome.FOSSILIZED), report("run-2", "0[0]", Outcome.CULLED)
    tamiyo.bus.publish(Topic.FIELD_REPORTS, theirs)
    tamiyo.bus.publish(Topic.FIELD_REPORTS, ours)
    drained: list[FieldReport] = []

    def arrived() -> bool:  # one subscription delivers in order: once ours is in, theirs was seen first
        drained.extend(host.drain_field_reports())
        return bool(drained)

    wait_for(arrived, what="Tamiyo's report")
    assert drained == [ours] and host.drain_field_reports() == []

    seen = Collector(tamiyo.bus, Topic.FIELD_REPORTS)
    rolled_back = report(RUN, "2[1]", Outcome.ROLLED_BACK)
    host.observe_outcomes([rolled_back])
    host.observe_outcomes([])  # nothing to say: nothing published
    wait_for(lambda: len(seen.payloads) == 3, what="the host's outcome on the bus")
    assert seen.payloads[-1] == rolled_back and seen.received[-1].producer == "trainer"
    assert host.drain_field_reports() == []


# ------------------------------------------------------------------------------------------ crashes and state


def test_a_crashed_worker_is_replaced_within_the_boundary_and_nothing_is_paid_twice(
        host: NarsetHost, trainer_bus: Bus, tamiyo: ScriptedTamiyo, monkeypatch: pytest.MonkeyPatch) -> None:
    log = Collector(trainer_bus, Topic.NARSET_ALLOCATIONS)
    stall(host)

    def crash(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("worker lost")

    monkeypatch.setattr(host.workers["local-0"], "step", crash)
    tamiyo.commands[4] = germinate("0", 0)
    signal = host.decide(packet(4))

    assert host.crashed == ["local-0"] and host.owner == dict.fromkeys(REGIONS, "local-1")
    assert kinds(signal) == [("0[0]", CommandType.GERMINATE), ("0[0]", CommandType.ADVANCE)]
    assert host.spent_total == pytest.approx(PRICE) and host.ledger.spent_this_cycle("0") == pytest.approx(PRICE)
    # The new worker resumed each region from its state after epoch 3, so the log replays exactly.
    decisions = log.wait_for(12)
    assert len(decisions) == 12 and [d.window for d in decisions[-3:]] == [4, 4, 4]
    assert replay(decisions) == decisions


def test_state_round_trips_through_json_and_a_foreign_version_is_refused(
        host: NarsetHost, trainer_bus: Bus, tamiyo: ScriptedTamiyo) -> None:
    stall(host)
    tamiyo.budgets["0"] = 10.0
    tamiyo.commands[4] = [*germinate("0", 0), *germinate("2", 0)]  # "0" waits for budget, "2" is paid
    host.decide(packet(4))
    state = json.loads(json.dumps(host.state_dict()))
    assert state["spent_total"] == pytest.approx(PRICE) and state["previous_val_loss"] == 1.0

    restored = make_host(trainer_bus)
    try:
        restored.load_state_dict(state)
        assert restored.state_dict() == host.state_dict()
        assert restored.owner == host.owner and restored.spent_total == pytest.approx(PRICE)
        assert "0[0]" in restored.workers["local-0"].waiting
        with pytest.raises(ValueError, match="narset host state version 99 is not 1"):
            restored.load_state_dict(state | {"version": 99})
    finally:
        restored.close()


# ------------------------------------------------------------------------------------------ bad input


def test_malformed_messages_are_dead_lettered_and_the_host_goes_on(
        host: NarsetHost, trainer_bus: Bus, tamiyo: ScriptedTamiyo) -> None:
    for topic in (Topic.BUDGET_ALLOCATIONS, Topic.ADAPTATION_SIGNALS, Topic.PROPOSAL_DECISIONS):
        tamiyo.bus.publish_raw(topic, b"\x00 not an envelope")
    # A valid envelope of another topic's model is just as malformed here.
    wrong = tamiyo.bus.publish(Topic.PROPOSALS, StrategicOpportunityProposal(
        proposal_id="p", region_id="0", epoch=1, opportunity="x", plan=["y"], ask=1.0, expected_roi=1.0))
    tamiyo.bus.publish_raw(Topic.BUDGET_ALLOCATIONS, wrong.model_dump_json().encode())

    signal = host.decide(packet(1))
    assert signal.reason == "scripted" and host.ledger.allocation("0") is not None
    letters = trainer_bus.read_dead_letters(Topic.BUDGET_ALLOCATIONS, max_messages=2, timeout_s=5)
    assert len(letters) == 2 and {letter.reason for letter in letters} == {REASON_MALFORMED}
    assert all(letter.subscription == f"narset-host-{host.host_id}" for letter in letters)
    for topic in (Topic.ADAPTATION_SIGNALS, Topic.PROPOSAL_DECISIONS):
        (letter,) = trainer_bus.read_dead_letters(topic, max_messages=1, timeout_s=5)
        assert letter.data == b"\x00 not an envelope"
    assert host.proposal_decisions() == []
